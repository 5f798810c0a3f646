// RudderStack's JavaScript SDK v3, the npm build with its plugins bundled (no CDN).
import { RudderAnalytics } from "@rudderstack/analytics-js/bundled";

window.RudderAnalytics = RudderAnalytics;
