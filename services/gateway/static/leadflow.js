/* leadflow.js: a small, dependency-free tracker for the leadflow ingest gateway.
 *
 *   <script async src="https://GATEWAY/js/leadflow.js" data-write-key="WRITE_KEY"></script>
 *
 * Options (data-* attributes on the script tag, or window.leadflowConfig = {...}):
 *   data-write-key  the write key (required)
 *   data-host       the gateway's origin (default: where this script was loaded from)
 *   data-cookie     the first-party anonymous-id cookie (default: lf_aid)
 *
 * It sends a page view on load, the time on page when the page is left (navigator.sendBeacon),
 * and, when a form with an email field is submitted, an identify plus a form_submit track call.
 * Bodies are Segment HTTP Tracking API messages sent as text/plain with `writeKey` inside, so
 * no CORS preflight is needed. window.leadflow.page/track/identify are there for your own calls.
 */
(function (window, document) {
  "use strict";
  if (window.leadflow && window.leadflow.loaded) return;

  var script = document.currentScript;
  var config = window.leadflowConfig || {};
  function option(name, attribute) {
    return config[name] || (script && script.getAttribute(attribute)) || null;
  }
  var writeKey = option("writeKey", "data-write-key");
  var host = option("host", "data-host") || (script ? new URL(script.src).origin : "");
  var cookieName = option("cookie", "data-cookie") || "lf_aid";
  var COOKIE_MAX_AGE = 400 * 24 * 3600;
  if (!writeKey) {
    if (window.console) window.console.warn("leadflow.js: no data-write-key; nothing is sent");
    return;
  }

  function uuid() {
    if (window.crypto && window.crypto.randomUUID) return window.crypto.randomUUID();
    return "xxxxxxxx-xxxx-4xxx-yxxx-xxxxxxxxxxxx".replace(/[xy]/g, function (c) {
      var r = (Math.random() * 16) | 0;
      return (c === "x" ? r : (r & 0x3) | 0x8).toString(16);
    });
  }

  function readCookie(name) {
    var parts = document.cookie ? document.cookie.split("; ") : [];
    for (var i = 0; i < parts.length; i++) {
      var index = parts[i].indexOf("=");
      if (parts[i].slice(0, index) === name) return decodeURIComponent(parts[i].slice(index + 1));
    }
    return null;
  }

  function anonymousId() {
    var id = readCookie(cookieName);
    try {
      id = id || window.localStorage.getItem(cookieName);
    } catch (ignored) { /* storage blocked */ }
    id = id || uuid();
    document.cookie = cookieName + "=" + encodeURIComponent(id) + "; Max-Age=" + COOKIE_MAX_AGE +
      "; Path=/; SameSite=Lax" + (location.protocol === "https:" ? "; Secure" : "");
    try {
      window.localStorage.setItem(cookieName, id);
    } catch (ignored) { /* storage blocked */ }
    return id;
  }

  var aid = anonymousId();
  var startedAt = Date.now();

  function campaign() {
    var params = new URLSearchParams(location.search);
    var names = { utm_source: "source", utm_medium: "medium", utm_campaign: "name",
      utm_term: "term", utm_content: "content" };
    var result = {};
    Object.keys(names).forEach(function (key) {
      if (params.get(key)) result[names[key]] = params.get(key);
    });
    return result;
  }

  function page() {
    return { url: location.href, path: location.pathname, search: location.search,
      title: document.title, referrer: document.referrer };
  }

  function message(type, fields) {
    var now = new Date().toISOString();
    var body = { type: type, messageId: uuid(), anonymousId: aid, timestamp: now, sentAt: now,
      context: { library: { name: "leadflow.js", version: "1" }, page: page(),
        campaign: campaign(), userAgent: navigator.userAgent, locale: navigator.language } };
    Object.keys(fields).forEach(function (key) { body[key] = fields[key]; });
    return body;
  }

  function send(path, body, beacon) {
    body.writeKey = writeKey;
    var data = JSON.stringify(body);
    var url = host + path;
    if (beacon && navigator.sendBeacon) {
      try {
        if (navigator.sendBeacon(url, new Blob([data], { type: "text/plain" }))) return;
      } catch (ignored) { /* fall back to fetch */ }
    }
    if (window.fetch) {
      window.fetch(url, { method: "POST", body: data, keepalive: true, credentials: "omit",
        headers: { "Content-Type": "text/plain" } }).catch(function () { /* never break */ });
    }
  }

  var api = {
    loaded: true,
    anonymousId: function () { return aid; },
    page: function (properties) {
      var props = page();
      Object.keys(properties || {}).forEach(function (k) { props[k] = properties[k]; });
      send("/v1/page", message("page", { properties: props }));
    },
    track: function (event, properties, traits) {
      send("/v1/track", message("track", { event: event, properties: properties || {},
        traits: traits || {} }));
    },
    identify: function (traits, userId) {
      var fields = { traits: traits || {} };
      if (userId) fields.userId = String(userId);
      send("/v1/identify", message("identify", fields));
    }
  };

  var timeSent = false;
  function timeOnPage() {
    if (timeSent) return;
    timeSent = true;
    send("/v1/track", message("track", { event: "Time On Page", properties: {
      seconds: Math.round((Date.now() - startedAt) / 1000), url: location.href } }), true);
  }
  window.addEventListener("pagehide", timeOnPage);
  document.addEventListener("visibilitychange", function () {
    if (document.visibilityState === "hidden") timeOnPage();
  });

  var TRAIT_FIELDS = { first_name: ["first_name", "firstname", "firstName", "fname"],
    last_name: ["last_name", "lastname", "lastName", "lname"], company: ["company"],
    job_title: ["job_title", "jobtitle", "title"], country: ["country"] };

  document.addEventListener("submit", function (submitted) {
    var form = submitted.target;
    if (!form || !form.querySelector) return;
    var field = form.querySelector("input[type=email], input[name=email], input[name*=email i]");
    var email = field && field.value ? field.value.trim() : "";
    if (!email) return;
    var traits = { email: email };
    Object.keys(TRAIT_FIELDS).forEach(function (trait) {
      TRAIT_FIELDS[trait].forEach(function (name) {
        var input = form.elements ? form.elements.namedItem(name) : null;
        if (input && input.value && !traits[trait]) traits[trait] = String(input.value).trim();
      });
    });
    var formName = form.getAttribute("data-leadflow-form") || form.id ||
      form.getAttribute("name") || "form";
    var now = new Date().toISOString();
    send("/v1/batch", { sentAt: now, batch: [
      message("identify", { traits: traits }),
      message("track", { event: "form_submit", traits: { email: email },
        properties: { form: formName, url: location.href } })
    ] }, true);
  }, true);

  window.leadflow = api;
  api.page();
})(window, document);
