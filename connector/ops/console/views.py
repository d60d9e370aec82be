"""The console's pages: overview, segments, rules, people, live events and dead letters (docs/console.md)."""

from __future__ import annotations

import csv
import io
import json
import math
import re
import unicodedata
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from flask import (
    Blueprint,
    Response,
    abort,
    current_app,
    g,
    jsonify,
    make_response,
    redirect,
    render_template,
    request,
    stream_with_context,
    url_for,
)
from markupsafe import Markup, escape
from werkzeug.exceptions import HTTPException
from werkzeug.wrappers import Response as BaseResponse

from connector import clock, unicode_text
from connector.ops import audit, live, tokens
from connector.ops.console import session
from connector.ops.console.charts import arm_bars, arm_name, day_bars, sparkline
from connector.ops.console.client import ApiError, call, get, post
from connector.runtime import Runtime
from rules.variants import NAMES as VARIANT_NAMES

bp = Blueprint(
    "console",
    __name__,
    url_prefix="/console",
    template_folder="templates",
    static_folder="static",
    static_url_path="/static",
)
PENDING_WARNING = 1000
RECENT_DELIVERIES = 100
CSV_PAGE = 500
# a spreadsheet reads a cell starting with one of these as a formula (OWASP, "CSV Injection")
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
RULE_VERSIONS_SHOWN = 20
NEXT_LENGTH = 2000  # the longest address a login goes on to
# the characters that change the direction of the text after them (Bidi_Control)
BIDI_CONTROL = re.compile("([\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069])")
# what JSON shows as an escape rather than as itself: those and the other invisible breaks and controls
JSON_INVISIBLE = re.compile("[\u0080-\u009f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def runtime() -> Runtime:
    found: Runtime = current_app.extensions["connector.runtime"]
    return found


# --- session and errors -------------------------------------------------------------------


@bp.before_request
def _session() -> BaseResponse | None:
    if request.endpoint in ("console.login", "console.static"):
        return None
    found = session.load(runtime().queue_redis, clock.now())
    if found is None:
        response = redirect(url_for("console.login", next=request.full_path.rstrip("?")))
        if session.COOKIE in request.cookies:
            session.end(response)  # ended, or of an earlier format: nothing to keep
        return response
    g.console, g.console_token = found
    if request.method == "POST":
        session.check_csrf()
    return None


@bp.after_request
def _headers(response: Response) -> Response:
    response.headers.setdefault("Cache-Control", "no-store")
    response.headers.setdefault("X-Frame-Options", "DENY")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    return response


@bp.errorhandler(ApiError)
def _api_error(err: ApiError) -> Any:
    if err.status == 401:  # the token was revoked or expired since the page began
        session.close(runtime().queue_redis)
        response = redirect(url_for("console.login"))
        session.end(response)
        return response
    return render_template("console/error.html", status=err.status, message=err.message), err.status


@bp.errorhandler(HTTPException)
def _http_error(err: HTTPException) -> Any:
    code = err.code or 500
    return render_template("console/error.html", status=code, message=err.description), code


@bp.app_context_processor
def _context() -> dict[str, Any]:
    return {
        "sparkline": sparkline,
        "day_bars": day_bars,
        "arm_bars": arm_bars,
        "arm_name": arm_name,
        "quote": quote,
    }


@bp.app_template_filter("pretty_json")
def pretty_json(value: Any) -> str:
    """``value`` as indented JSON with every character as itself (Hebrew, Arabic, an apostrophe;
    the page escapes the HTML), but those that show nothing or turn the text around (U+202E, a line
    separator, C1 controls), written as their ``\\uXXXX`` escape; a lone surrogate stored by an
    earlier release shows as U+FFFD."""
    text = json.dumps(value, ensure_ascii=False, indent=2, sort_keys=True, default=str)
    return JSON_INVISIBLE.sub(lambda m: f"\\u{ord(m.group()):04x}", unicode_text.replaced(text))


@bp.app_template_filter("param_value")
def param_value(value: Any) -> str:
    """A template parameter as written: a list of variants as each variant's value (``a 24h, b 48h``),
    anything else as its JSON."""
    if isinstance(value, list) and 2 <= len(value) <= len(VARIANT_NAMES):
        return ", ".join(f"{VARIANT_NAMES[i]} {pretty_json(v).strip(chr(34))}" for i, v in enumerate(value))
    return pretty_json(value).strip('"')


@bp.app_template_filter("isolated")
def isolated(value: Any) -> Markup:
    """Text someone sent (an email, a trait, an event name) as HTML: escaped, in a ``<bdi>`` so its
    direction does not spill onto the text around it, and each character that changes direction
    (U+202E RIGHT-TO-LEFT OVERRIDE, ...) isolated on its own and marked with its code point
    (console.css), so the text reads in the order it was written. The characters stay in the page:
    what is copied from it is the value as stored."""
    parts = BIDI_CONTROL.split(unicode_text.replaced(str(value)))
    shown = Markup("").join(
        Markup('<bdi class="ctl" data-cp="U+{:04X}">{}</bdi>').format(ord(part), part)
        if n % 2
        else escape(part)
        for n, part in enumerate(parts)
    )
    return Markup('<bdi class="v">{}</bdi>').format(shown)


def render(template: str, **values: Any) -> str:
    token = getattr(g, "console_token", None)
    return render_template(
        f"console/{template}",
        token=token,
        csrf=g.console.csrf if token else None,
        may_edit=bool(token and token.allows("editor")),
        may_erase=bool(token and token.allows("admin")),
        **values,
    )


# --- login --------------------------------------------------------------------------------


def _safe_next(target: str | None) -> str:
    """Where a login goes on to: ``target`` (the page that sent the browser to log in) when it is a
    plain path of the console on this site, else the console's home."""
    return target if target and _console_path(target) else url_for("console.home")


def _console_path(target: str) -> bool:
    """Whether ``target`` is a path under ``/console`` of this site: not another site or scheme
    (``//host``, ``https:``, a backslash, which browsers read as a slash), no control character,
    written or percent-encoded (a header cannot hold a line break), no ``.`` or ``..`` segment."""
    decoded = unquote(target)
    if len(target) > NEXT_LENGTH or "\\" in decoded:
        return False
    if any(unicodedata.category(c) == "Cc" for c in target + decoded):
        return False
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not (parts.path == "/console" or parts.path.startswith("/console/")):
        return False
    return not any(segment in (".", "..") for segment in unquote(parts.path).split("/"))


@bp.route("/login", methods=["GET", "POST"])
def login() -> Any:
    error, status = None, 200
    if request.method == "POST":
        session.check_login_csrf()
        presented = request.form.get("token", "").strip()
        conn = runtime().queue_redis
        now = clock.now()
        token = tokens.authenticate(conn, presented, now)
        response = redirect(_safe_next(request.form.get("next")))
        if token is not None and session.start(conn, response, presented, token, now):
            return response
        error, status = "That token is not valid (unknown, revoked or expired).", 401
    response = make_response("", status)
    csrf = session.login_csrf(response)
    response.set_data(
        render_template(
            "console/login.html",
            token=None,
            csrf=csrf,
            error=error,
            next=request.form.get("next") or request.args.get("next", ""),
        )
    )
    return response


@bp.route("/logout", methods=["POST"])
def logout() -> Any:
    session.close(runtime().queue_redis)
    response = redirect(url_for("console.login"))
    session.end(response)
    return response


# --- overview -----------------------------------------------------------------------------


@bp.route("/")
def home() -> Any:
    accounts = get("/accounts", limit=500)["items"]
    if len(accounts) == 1:
        return redirect(url_for("console.overview", account=accounts[0]["id"]))
    return render("accounts.html", accounts=accounts, account=None)


def _recent_refusals(account_id: str) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for _, entry in live.latest(runtime().queue_redis, account_id, RECENT_DELIVERIES):
        if entry.get("outcome") == "refused":
            out.setdefault(entry["sender"], []).append(entry)
    return out


def attention(detail: dict[str, Any], refusals: dict[str, list[dict[str, Any]]]) -> list[dict[str, str]]:
    """What needs looking at, most urgent first: paused destinations, dead letters, refused
    deliveries among the latest live entries (refusals are always recorded there, stored
    deliveries only while someone watches), long pending queues."""
    items: list[tuple[int, str, str]] = []
    problem = detail.get("file_error")
    if problem:
        where = f"{problem['path']}: " if problem.get("path") else ""
        items.append(
            (
                0,
                "critical",
                f"The account file {problem['file']} is refused ({where}{problem['reason']}): its last "
                "valid version is in force until the file is mended",
            )
        )
    for dest in detail["destinations"]:
        health = dest["health"]
        if health["paused"]:
            reason = (health.get("pause") or {}).get("reason") or "no reason recorded"
            items.append((0, "critical", f"Destination {dest['name']} is paused: {reason}"))
        if health["dead_letters"]:
            count = health["dead_letters"]
            letters = "dead letter" if count == 1 else "dead letters"
            items.append((1, "warning", f"Destination {dest['name']} has {count} {letters}"))
        if health["pending"] >= PENDING_WARNING:
            items.append(
                (2, "warning", f"Destination {dest['name']} has {health['pending']} changes pending")
            )
    for sender, refused in sorted(refusals.items()):
        latest = refused[-1]
        text = (
            f"Sender {sender}: {len(refused)} refused among the latest {RECENT_DELIVERIES} live entries "
            f"(latest: {latest['status']} {latest['reason']})"
        )
        items.append((1, "warning", text))
    return [{"level": level, "text": text} for _, level, text in sorted(items, key=lambda i: i[0])]


@bp.route("/a/<account>/")
def overview(account: str) -> Any:
    detail = get(f"/accounts/{quote(account)}")
    refusals = _recent_refusals(account)
    queue = current_app.extensions["connector.ingest.queue"]
    return render(
        "overview.html",
        account=account,
        detail=detail,
        attention=attention(detail, refusals),
        refusals={sender: len(found) for sender, found in refusals.items()},
        waiting=sum(queue.pending().values()),
    )


# --- segments -----------------------------------------------------------------------------


@bp.route("/a/<account>/segments")
def segments(account: str) -> Any:
    rows = []
    for segment in get(f"/accounts/{quote(account)}/segments", limit=500)["items"]:
        one = get(f"/accounts/{quote(account)}/segments/{quote(segment['name'])}", hours=48, days=1)
        hourly = one["hourly"]
        rows.append(
            {
                **segment,
                "trend": [p["size"] for p in hourly],
                "entered": sum(p["entered"] for p in hourly),
                "exited": sum(p["exited"] for p in hourly),
            }
        )
    groups = sorted({s["group"] for s in rows if s.get("group")})
    migrations = [get(f"/accounts/{quote(account)}/groups/{quote(g)}/migration", since="30d") for g in groups]
    return render("segments.html", account=account, segments=rows, migrations=migrations)


@bp.route("/a/<account>/segments/<name>")
def segment(account: str, name: str) -> Any:
    base = f"/accounts/{quote(account)}/segments/{quote(name)}"
    one = get(base, hours=48, days=30)
    q, cursor = request.args.get("q", ""), request.args.get("cursor")
    members = get(f"{base}/members", q=q, cursor=cursor, limit=50)
    report = get(f"{base}/report", since="30d")
    return render("segment.html", account=account, segment=one, members=members, q=q, report=report)


def spreadsheet_safe(cell: str) -> str:
    """The cell as a spreadsheet shows it as text: one that could start a formula gets a leading
    ``'``. Emails are written by whoever holds a sender's write key, so no cell is trusted."""
    return f"'{cell}" if cell.startswith(FORMULA_START) else cell


def _csv_rows(account: str, name: str) -> Iterator[str]:
    """The members, page by page. A bulk export of personal data: recorded in the audit log once,
    when the stream ends (after its last page, or cut short: the browser went away, a page failed),
    since only then is it known how many rows were handed out."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["profile_id", "email"])
    cursor: str | None = None
    rows, complete = 0, False
    try:
        while True:
            page = get(
                f"/accounts/{quote(account)}/segments/{quote(name)}/members", cursor=cursor, limit=CSV_PAGE
            )
            for member in page["items"]:
                writer.writerow(
                    [spreadsheet_safe(str(member["profile_id"])), spreadsheet_safe(member["email"] or "")]
                )
            rows += len(page["items"])
            cursor = page["next_cursor"]
            complete = cursor is None
            yield out.getvalue()
            out.seek(0)
            out.truncate()
            if complete:
                return
    finally:
        _record_export(account, name, rows, complete)


def _record_export(account: str, name: str, rows: int, complete: bool) -> None:
    """``segment.export`` by the session's token: how many rows were written and whether the last
    page was, nothing of what they hold."""
    audit.record(
        runtime().queue_redis,
        g.console_token.id,
        "segment.export",
        f"segment:{account}/{name}",
        [account],
        None,
        {"rows": rows, "complete": complete},
        clock.now(),
    )


@bp.route("/a/<account>/segments/<name>/members.csv")
def members_csv(account: str, name: str) -> Any:
    get(f"/accounts/{quote(account)}/segments/{quote(name)}", hours=1, days=1)  # 404 before streaming
    filename = f"{account}-{name}-members.csv".replace('"', "")
    return Response(
        stream_with_context(_csv_rows(account, name)),
        mimetype="text/csv",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


# --- people -------------------------------------------------------------------------------


@bp.route("/a/<account>/people")
def people(account: str) -> Any:
    email = request.args.get("email", "").strip()
    if not email:
        return render("find.html", account=account, email="", error=None)
    try:
        found = get(f"/accounts/{quote(account)}/people", email=email)
    except ApiError as err:
        if err.status not in (404, 422):
            raise
        return render("find.html", account=account, email=email, error=err.message), err.status
    return redirect(url_for("console.person", account=account, pid=found["profile_id"]))


TIMELINE_LIMIT = 100  # events and ledger changes the person page lists


@bp.route("/a/<account>/people/<pid>")
def person(account: str, pid: str) -> Any:
    base = f"/accounts/{quote(account)}/people/{quote(pid)}"
    return render(
        "person.html",
        account=account,
        person=get(base),
        timeline=get(f"{base}/timeline", limit=TIMELINE_LIMIT),
        timeline_limit=TIMELINE_LIMIT,
        explain=get(f"{base}/explain"),
    )


@bp.route("/a/<account>/people/<pid>/erase", methods=["POST"])
def erase(account: str, pid: str) -> Any:
    post(
        f"/accounts/{quote(account)}/people/{quote(pid)}/erase", {"confirm": request.form.get("confirm", "")}
    )
    return render("done.html", account=account, title="Erased", message=f"Profile {pid} was erased.")


# --- live events --------------------------------------------------------------------------


@bp.route("/a/<account>/live")
def live_page(account: str) -> Any:
    detail = get(f"/accounts/{quote(account)}")
    senders = [s["name"] for s in detail["senders"]]
    return render("live.html", account=account, senders=senders, shown_per_second=_shown_per_second())


def _shown_per_second() -> int:
    """The deliveries a second this web process shows one by one (its live publisher's limit);
    0 when it shows every one."""
    shown = int(getattr(getattr(current_app.wsgi_app, "observer", None), "shown_per_second", 0))
    return 0 if shown >= live.EVERY_DELIVERY else shown


@bp.route("/a/<account>/live/stream")
def live_stream(account: str) -> Any:
    """Asked again every half second by the page's EventSource: a scope check and one read."""
    if not g.console_token.covers(account) or runtime().account(account) is None:
        abort(404, f"no account {account!r}")  # the token must cover the account
    return live.stream_response(runtime().queue_redis, account)


# --- dead letters -------------------------------------------------------------------------


@bp.route("/a/<account>/deadletters")
def deadletters(account: str) -> Any:
    kind, text = request.args.get("kind", ""), request.args.get("filter", "")
    base = f"/accounts/{quote(account)}/deadletters"
    page = get(base, kind=kind, filter=text, cursor=request.args.get("cursor"), limit=50)
    count = get(f"{base}/count", kind=kind, filter=text)
    return render(
        "deadletters.html",
        account=account,
        page=page,
        kind=kind,
        filter=text,
        count=count,
        select_page=request.args.get("select") == "page",
    )


@bp.route("/a/<account>/deadletters/<kind>/<item_id>")
def deadletter(account: str, kind: str, item_id: str) -> Any:
    item = get(f"/accounts/{quote(account)}/deadletters/{quote(kind)}/{quote(item_id)}")
    return render("deadletter.html", account=account, item=item)


@bp.route("/a/<account>/deadletters/<action>", methods=["POST"])
def deadletters_act(account: str, action: str) -> Any:
    if action not in ("replay", "discard"):
        abort(404)
    ids = request.form.getlist("ids")
    if not ids:
        abort(422, "choose at least one dead letter")
    result = post(f"/accounts/{quote(account)}/deadletters/{action}", {"ids": ids})
    message = f"{action.capitalize()}: {result['matched']} selected; {_outcomes(result['outcomes'])}."
    return render("done.html", account=account, title=action.capitalize(), message=message)


def _outcomes(outcomes: dict[str, int]) -> str:
    return ", ".join(f"{n:,} {what}" for what, n in sorted(outcomes.items())) or "nothing"


def _form_number(name: str, kind: type[int] | type[float]) -> Any:
    """A number the console's own form carried (a count, an instant); 422 for anything else."""
    raw = request.form.get(name, "")
    try:
        value = kind(raw) if raw else None
    except ValueError:
        abort(422, f"{name} is not a number: reload the dead letters and try again")
    if value is not None and (not math.isfinite(value) or value < 0):
        abort(422, f"{name} is not a number: reload the dead letters and try again")
    return value


def _carried_outcomes() -> dict[str, int]:
    """The outcomes of the earlier batches of an "all matching" run, as its form carried them."""
    try:
        raw = json.loads(request.form.get("outcomes") or "{}")
    except ValueError:
        return {}
    if not isinstance(raw, dict):
        return {}
    return {str(k): v for k, v in raw.items() if isinstance(v, int) and not isinstance(v, bool) and v >= 0}


@bp.route("/a/<account>/deadletters/<action>/all", methods=["POST"])
def deadletters_all(account: str, action: str) -> Any:
    """Every dead letter matching the page's filters, not only the page: first a confirmation
    stating how many (counted now, and bound to those: none stored later is included), then the
    API's "all" replay or discard, a batch a request, each next batch posted by the page (by
    itself with JavaScript, with a button without) until none is left."""
    if action not in ("replay", "discard"):
        abort(404)
    if not g.console_token.allows("editor"):  # the API refuses it too; no confirmation to offer
        abort(403, "replaying and discarding dead letters need an editor token")
    kind, text = request.form.get("kind", ""), request.form.get("filter", "")
    base = f"/accounts/{quote(account)}/deadletters"
    values = {"account": account, "action": action, "kind": kind, "filter": text}
    if request.form.get("step") != "run":
        count = get(f"{base}/count", kind=kind, filter=text)
        return render("deadletters_all.html", step="confirm", count=count, **values)
    body: dict[str, Any] = {"all": True, "kind": kind or None, "filter": text or None}
    body["until"], body["cursor"] = _form_number("until", float), request.form.get("cursor") or None
    result = post(f"{base}/{action}", {k: v for k, v in body.items() if v is not None})
    outcomes = _carried_outcomes()
    for what, n in result["outcomes"].items():
        outcomes[what] = outcomes.get(what, 0) + n
    done = (_form_number("done", int) or 0) + result["matched"]
    total = max(_form_number("total", int) or 0, done)
    step = "more" if result["next_cursor"] else "done"
    return render(
        "deadletters_all.html",
        step=step,
        done=done,
        total=total,
        until=body["until"],
        cursor=result["next_cursor"],
        outcomes=outcomes,
        outcomes_text=_outcomes(outcomes),
        **values,
    )


# --- rules --------------------------------------------------------------------------------


@bp.route("/a/<account>/rules")
def rules_page(account: str) -> Any:
    base = f"/accounts/{quote(account)}/rules"
    versions = get(f"{base}/versions")["items"][:RULE_VERSIONS_SHOWN]
    refused = get(f"/accounts/{quote(account)}").get("file_error")
    return render("rules.html", account=account, rules=get(base), versions=versions, file_error=refused)


def _json_answer(method: str, path: str, body: Any = None) -> Any:
    """The API's answer as JSON for the editor's script, errors included (but a lost session)."""
    try:
        return jsonify(call(method, path, body=body))
    except ApiError as err:
        if err.status == 401:
            raise
        return jsonify(error=err.message, status=err.status), err.status


def _save_and_publish(base: str, text: str) -> Any:
    try:
        version = call("PUT", base, body={"text": text, "note": request.form.get("note", "")})
    except ApiError as err:
        if err.status == 401:
            raise
        return jsonify(error=err.message, status=err.status), err.status
    return _json_answer("POST", f"{base}/versions/{version['version']}/publish")


@bp.route("/a/<account>/rules/<action>", methods=["POST"])
def rules_act(account: str, action: str) -> Any:
    base = f"/accounts/{quote(account)}/rules"
    text = request.form.get("text", "")
    if action == "validate":
        return _json_answer("POST", f"{base}/validate", {"text": text})
    if action == "dry-run":
        return _json_answer("POST", f"{base}/dry-run", {"text": text})
    if action == "publish":
        return _save_and_publish(base, text)
    abort(404)


@bp.route("/a/<account>/rules/progress/<key>")
def rules_progress(account: str, key: str) -> Any:
    return _json_answer("GET", f"/accounts/{quote(account)}/rules/publish/{quote(key)}")
