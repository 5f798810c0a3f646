// Segment analytics.js 2.0, as a site installs it from npm.
import { AnalyticsBrowser } from "@segment/analytics-next";

window.AnalyticsBrowser = AnalyticsBrowser;
