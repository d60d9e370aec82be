"""Predictive traits per account: churn risk, expected orders, expected next order date, CLV and RFM.

Each account's models are fitted on its own stored order history (``order_completed`` events with
``revenue``): the BG/NBD purchase model and the Gamma-Gamma spend model, by maximum likelihood in
numpy/scipy (:mod:`connector.predict.models`, pure), on each customer's sufficient statistics
(:mod:`connector.predict.features`). The training job (:mod:`connector.predict.jobs`, RQ queue ``predict``,
daily from the scheduler and on demand with ``connector predict train``) scores every customer and
stores the traits compactly per profile with the model version (:mod:`connector.predict.store`); rules
read them as ``predicted.<trait>`` once merged into the profile (:func:`predicted_traits`,
:func:`with_predictions`), and ``rank`` conditions compare a profile's position in the account's
distribution as of the last training. :mod:`connector.predict.backtest` holds out the last period of an
account's data and measures the predictions against simple baselines. See docs/predict.md.
"""

from __future__ import annotations

from connector.predict.traits import explain, predicted_traits, render_explain, with_predictions

__all__ = ["explain", "predicted_traits", "render_explain", "with_predictions"]
