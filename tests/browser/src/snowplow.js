// Snowplow's browser tracker with the form- and link-click-tracking plugins.
import * as tracker from "@snowplow/browser-tracker";
import * as forms from "@snowplow/browser-plugin-form-tracking";
import * as links from "@snowplow/browser-plugin-link-click-tracking";

window.snowplow = { ...tracker, ...forms, ...links };
