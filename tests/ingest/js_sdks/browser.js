// analytics.js (npm @segment/analytics-next) as one browser file: the test page calls
// window.AnalyticsBrowser.load(...) with its settings inline, so nothing is fetched from Segment.
import { AnalyticsBrowser } from '@segment/analytics-next'

window.AnalyticsBrowser = AnalyticsBrowser
