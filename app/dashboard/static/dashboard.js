/* Session Supervisor dashboard: polls the JSON snapshots (one request a second while the
   workload runs, with If-None-Match so an unchanged snapshot is a bodiless 304) and updates
   the page in place. Every text that comes from the JSON goes in through textContent or an
   attribute, never as markup. No library, no build step. */
(function () {
  "use strict";

  var POLL_MS = 1000;
  var ENDED_POLL_MS = 5000;
  var HIDDEN_POLL_MS = 5000;
  var MAX_BACKOFF_MS = 10000;
  var ENDED = { completed: true, failed: true, stopped: true };
  var STATES = ["rendered", "rerendering", "assigned", "failed", "waiting"];
  var STATE_LABELS = {
    rendered: "rendered",
    rerendering: "re-rendering",
    assigned: "assigned",
    failed: "refused or failed",
    waiting: "waiting"
  };
  var COLOURS = {
    rendered: "var(--rendered)",
    rerendering: "var(--rerendering)",
    assigned: "var(--assigned)",
    failed: "var(--failed)",
    waiting: "var(--waiting)"
  };
  var TONES = {
    started: "info",
    "users-added": "info",
    "user-count-set": "info",
    "tails-moved": "info",
    "frame-duplicated": "info",
    "frame-flagged": "bad",
    completed: "good",
    failed: "bad",
    "user-banned": "bad",
    "frame-refused": "bad",
    "user-disconnected": "bad"
  };

  // --- small helpers -----------------------------------------------------------------------

  function $(id) { return document.getElementById(id); }

  function el(tag, className, text) {
    var node = document.createElement(tag);
    if (className) { node.className = className; }
    if (text !== undefined && text !== null) { node.textContent = String(text); }
    return node;
  }

  function setText(id, text) {
    var node = $(id);
    var value = text === null || text === undefined ? "–" : String(text);
    if (node && node.textContent !== value) { node.textContent = value; }
  }

  function show(node, visible) { if (node) { node.hidden = !visible; } }

  function isNumber(value) { return typeof value === "number" && isFinite(value); }

  function duration(seconds) {
    if (!isNumber(seconds)) { return "–"; }
    var s = Math.max(0, Math.round(seconds));
    if (s < 60) { return s + " s"; }
    if (s < 3600) {
      var m = Math.floor(s / 60), rest = s % 60;
      return rest ? m + " min " + rest + " s" : m + " min";
    }
    if (s < 86400) {
      var h = Math.floor(s / 3600), min = Math.floor((s % 3600) / 60);
      return min ? h + " h " + min + " min" : h + " h";
    }
    var d = Math.floor(s / 86400), hours = Math.floor((s % 86400) / 3600);
    return hours ? d + " d " + hours + " h" : d + " d";
  }

  function pad(n) { return n < 10 ? "0" + n : String(n); }

  function clock(iso) {
    var t = Date.parse(iso);
    if (isNaN(t)) { return "–"; }
    var d = new Date(t);
    return pad(d.getHours()) + ":" + pad(d.getMinutes()) + ":" + pad(d.getSeconds());
  }

  function dateTime(iso) {
    var t = Date.parse(iso);
    if (isNaN(t)) { return "–"; }
    var d = new Date(t);
    return d.getFullYear() + "-" + pad(d.getMonth() + 1) + "-" + pad(d.getDate()) + " " + clock(iso);
  }

  function fixed(value, digits) {
    return isNumber(value) ? value.toFixed(digits) : "–";
  }

  function rate(value) {
    if (!isNumber(value)) { return "–"; }
    return value.toFixed(value < 10 ? 2 : 1);
  }

  function count(value) {
    return isNumber(value) ? value.toLocaleString("en-US") : "–";
  }

  function percent(value) { return isNumber(value) ? value.toFixed(1) + " %" : "–"; }

  // The server's clock says how old a timestamp is: the snapshot's generated_at, plus the
  // time since it arrived. The browser's own clock may be off.
  var serverClock = { at: null, received: 0 };

  function serverNow() {
    if (serverClock.at === null) { return Date.now(); }
    return serverClock.at + (Date.now() - serverClock.received);
  }

  function ago(iso) {
    var t = Date.parse(iso);
    if (isNaN(t)) { return "–"; }
    var seconds = (serverNow() - t) / 1000;
    return seconds < 1.5 ? "just now" : duration(seconds) + " ago";
  }

  /* Elements with data-at show the age of that instant; refreshed every second. */
  function refreshAges(root) {
    var nodes = (root || document).querySelectorAll("[data-at]");
    for (var i = 0; i < nodes.length; i++) {
      var text = ago(nodes[i].getAttribute("data-at"));
      if (nodes[i].textContent !== text) { nodes[i].textContent = text; }
    }
  }

  function ageNode(tag, iso) {
    var node = el(tag, "", ago(iso));
    if (iso) {
      node.setAttribute("data-at", iso);
      node.title = dateTime(iso);
    }
    return node;
  }

  // --- ETA -----------------------------------------------------------------------------------

  function etaText(eta, status) {
    var basis = eta && eta.eta_basis;
    if (basis === "measured" && isNumber(eta.eta_seconds)) {
      var text = "ETA " + duration(eta.eta_seconds);
      if (isNumber(eta.eta_low_seconds) && isNumber(eta.eta_high_seconds)) {
        text += " (80 %: " + duration(eta.eta_low_seconds) + " – " + duration(eta.eta_high_seconds) + ")";
      }
      return text;
    }
    if (basis === "warming-up") { return "ETA: measuring…"; }
    if (basis === "no-users") { return "ETA: waiting for users"; }
    if (basis === "ended") { return status === "completed" ? "Done" : "Ended"; }
    return "ETA: –";
  }

  /* The band: [low, high] on a scale from 0 to a little past high, the estimate a mark. */
  function drawBand(band, range, mark, eta) {
    var measured = eta && eta.eta_basis === "measured" && isNumber(eta.eta_seconds) &&
      isNumber(eta.eta_low_seconds) && isNumber(eta.eta_high_seconds);
    show(band, measured);
    if (!measured) { return; }
    var high = Math.max(eta.eta_high_seconds, eta.eta_seconds, 1);
    var scale = high * 1.15;
    var low = Math.max(0, Math.min(eta.eta_low_seconds, eta.eta_seconds));
    range.style.left = (100 * low / scale) + "%";
    range.style.width = (100 * (high - low) / scale) + "%";
    mark.style.left = (100 * eta.eta_seconds / scale) + "%";
    band.title = "80 % interval: " + duration(eta.eta_low_seconds) + " to " +
      duration(eta.eta_high_seconds) + "; estimate " + duration(eta.eta_seconds);
  }

  function bandNode(eta) {
    var band = el("span", "band small");
    var range = el("span", "band-range");
    var mark = el("span", "band-mark");
    band.appendChild(range);
    band.appendChild(mark);
    drawBand(band, range, mark, eta);
    return band;
  }

  function progressNode(percentage) {
    var bar = el("div", "progress");
    var fill = el("div", "progress-fill");
    fill.style.width = Math.max(0, Math.min(100, percentage || 0)) + "%";
    bar.appendChild(fill);
    bar.setAttribute("role", "progressbar");
    bar.setAttribute("aria-valuemin", "0");
    bar.setAttribute("aria-valuemax", "100");
    bar.setAttribute("aria-valuenow", String(Math.round(percentage || 0)));
    return bar;
  }

  function badge(status) {
    var node = el("span", "badge", status || "–");
    node.setAttribute("data-status", status || "");
    return node;
  }

  // --- polling -------------------------------------------------------------------------------

  /* Fetches `url` again and again. `handlers.data(body)` returns the next delay in ms;
     304 keeps the last body; 403 stops (the login is needed again). */
  function poll(url, handlers) {
    var etag = null;
    var failures = 0;
    var delay = POLL_MS;
    var timer = null;
    var stopped = false;
    var live = $("live");

    function setLive(state, text) {
      if (!live) { return; }
      live.setAttribute("data-state", state);
      if (live.textContent !== text) { live.textContent = text; }
    }

    var lastOk = null;
    var liveState = "idle";
    function refreshLive() {
      if (liveState === "live" || liveState === "ended") {
        var age = lastOk === null ? 0 : Math.round((Date.now() - lastOk) / 1000);
        var what = liveState === "ended" ? "ended · checked " : "live · updated ";
        setLive(liveState, what + (age < 1 ? "now" : age + " s ago"));
      }
    }

    function schedule(ms) {
      if (stopped) { return; }
      clearTimeout(timer);
      timer = setTimeout(tick, document.hidden ? Math.max(ms, HIDDEN_POLL_MS) : ms);
    }

    function problem(text) {
      var node = $("problem");
      if (!node) { return; }
      node.textContent = "";
      if (text) { node.appendChild(typeof text === "string" ? document.createTextNode(text) : text); }
      show(node, Boolean(text));
    }

    function tick() {
      var headers = {};
      if (etag) { headers["If-None-Match"] = etag; }
      fetch(url, { headers: headers, cache: "no-store", credentials: "same-origin" })
        .then(function (response) {
          if (response.status === 304) {
            return { kind: "same" };
          }
          if (response.status === 403) { return { kind: "forbidden" }; }
          if (response.status === 404) {
            return response.json().catch(function () { return {}; })
              .then(function (body) { return { kind: "missing", body: body }; });
          }
          if (!response.ok) { throw new Error("HTTP " + response.status); }
          var tag = response.headers.get("ETag");
          return response.json().then(function (body) { return { kind: "data", body: body, etag: tag }; });
        })
        .then(function (answer) {
          failures = 0;
          lastOk = Date.now();
          if (answer.kind === "forbidden") {
            stopped = true;
            liveState = "error";
            setLive("error", "signed out");
            var link = el("a", "", "sign in again");
            link.href = document.body.getAttribute("data-login") + "?next=" +
              encodeURIComponent(location.pathname);
            var span = el("span", "", "The dashboard no longer accepts this browser: ");
            span.appendChild(link);
            problem(span);
            return;
          }
          problem(null);
          if (answer.kind === "missing") {
            etag = null;
            liveState = "live";
            delay = handlers.missing ? handlers.missing(answer.body) : ENDED_POLL_MS;
          } else if (answer.kind === "data") {
            etag = answer.etag;
            if (answer.body && answer.body.generated_at) {
              var at = Date.parse(answer.body.generated_at);
              if (!isNaN(at)) { serverClock.at = at; serverClock.received = Date.now(); }
            }
            delay = handlers.data(answer.body);
            liveState = delay > POLL_MS ? "ended" : "live";
          }
          refreshLive();
          schedule(delay);
        })
        .catch(function () {
          failures += 1;
          liveState = "error";
          setLive("error", "connection lost · retrying");
          problem("The dashboard cannot reach the service; retrying…");
          schedule(Math.min(MAX_BACKOFF_MS, POLL_MS * Math.pow(2, failures - 1)));
        });
    }

    document.addEventListener("visibilitychange", function () {
      if (!document.hidden && !stopped) { schedule(0); }
    });
    setInterval(function () { refreshLive(); refreshAges(); }, 1000);
    setLive("idle", "connecting…");
    tick();
  }

  // --- the list page -------------------------------------------------------------------------

  function listPage(root) {
    var rows = $("workload-rows");
    var page = root.getAttribute("data-page");

    function row(w) {
      var tr = el("tr");
      tr.setAttribute("data-customer", w.customer_id);
      tr.setAttribute("data-status", w.status);

      var who = el("td");
      var link = el("a", "", w.customer_id);
      link.href = page + encodeURIComponent(w.customer_id);
      who.appendChild(link);
      tr.appendChild(who);
      tr.appendChild(el("td", "mono", w.object_id));
      var status = el("td");
      status.appendChild(badge(w.status));
      tr.appendChild(status);

      var progress = el("td");
      progress.appendChild(progressNode(w.progress_percentage));
      progress.appendChild(el("div", "small-text",
        count(w.rendered_frames) + " / " + count(w.total_frames) + " · " +
        percent(w.progress_percentage)));
      tr.appendChild(progress);

      tr.appendChild(el("td", "num", ENDED[w.status] ? "–" : rate(w.frames_per_second)));
      tr.appendChild(el("td", "num", w.active_users));
      var eta = el("td");
      eta.appendChild(el("div", "", etaText(w.eta, w.status)));
      eta.appendChild(bandNode(w.eta));
      tr.appendChild(eta);
      var started = el("td", "small-text");
      started.appendChild(ageNode("span", w.created_at));
      tr.appendChild(started);
      return tr;
    }

    poll(root.getAttribute("data-api"), {
      data: function (body) {
        var items = (body && body.workloads) || [];
        var fresh = document.createDocumentFragment();
        var running = 0;
        for (var i = 0; i < items.length; i++) {
          fresh.appendChild(row(items[i]));
          if (!ENDED[items[i].status]) { running += 1; }
        }
        rows.textContent = "";
        rows.appendChild(fresh);
        root.setAttribute("data-count", String(items.length));
        show($("no-workloads"), items.length === 0);
        document.title = (running ? running + " running · " : "") + "Workloads · Session Supervisor";
        return POLL_MS;
      }
    });
  }

  // --- the workload page: frame grid -----------------------------------------------------------

  function FrameGrid(node, tip) {
    this.node = node;
    this.tip = tip;
    this.cells = [];
    this.looks = [];
    this.grid = null;
    var self = this;
    node.addEventListener("mousemove", function (event) { self.hover(event); });
    node.addEventListener("mouseleave", function () { show(tip, false); });
  }

  FrameGrid.prototype.counts = function (i) {
    var g = this.grid;
    var size = Math.max(0, Math.min((i + 1) * g.bucket_frames, g.total_frames) - i * g.bucket_frames);
    var c = {
      rendered: g.rendered[i] || 0,
      rerendering: g.rerendering[i] || 0,
      assigned: g.assigned[i] || 0,
      failed: g.failed[i] || 0
    };
    c.waiting = Math.max(0, size - c.rendered - c.rerendering - c.assigned - c.failed);
    c.size = size;
    return c;
  };

  FrameGrid.prototype.range = function (i) {
    var g = this.grid;
    var first = i * g.bucket_frames;
    var last = Math.min((i + 1) * g.bucket_frames, g.total_frames) - 1;
    var a = g.first_frame + first * g.frame_step;
    var b = g.first_frame + last * g.frame_step;
    if (last <= first) { return "Frame " + a; }
    var text = "Frames " + a + "–" + b;
    if (g.frame_step > 1) { text += " (step " + g.frame_step + ")"; }
    return text;
  };

  /* A cell's look: one state's colour, or for a bucket with several states a bar of each
     state's share (left to right: rendered, re-rendering, assigned, failed, waiting). */
  FrameGrid.prototype.look = function (c) {
    var present = STATES.filter(function (s) { return c[s] > 0; });
    if (present.length <= 1) { return { cls: "cell s-" + (present[0] || "waiting"), bg: "" }; }
    var stops = [];
    var at = 0;
    for (var k = 0; k < present.length; k++) {
      var s = present[k];
      var next = at + 100 * c[s] / c.size;
      stops.push(COLOURS[s] + " " + at.toFixed(1) + "% " + next.toFixed(1) + "%");
      at = next;
    }
    return { cls: "cell mixed", bg: "linear-gradient(to right, " + stops.join(", ") + ")" };
  };

  FrameGrid.prototype.update = function (grid) {
    this.grid = grid;
    var n = grid.cells;
    if (this.cells.length !== n) {
      this.node.textContent = "";
      this.cells = [];
      this.looks = [];
      var fragment = document.createDocumentFragment();
      for (var i = 0; i < n; i++) {
        var cell = el("div", "cell");
        cell.setAttribute("data-i", String(i));
        fragment.appendChild(cell);
        this.cells.push(cell);
        this.looks.push("");
      }
      this.node.appendChild(fragment);
      this.node.setAttribute("data-size", n <= 240 ? "large" : n <= 600 ? "medium" : "small");
    }
    var totals = { rendered: 0, rerendering: 0, assigned: 0, failed: 0, waiting: 0 };
    for (var j = 0; j < n; j++) {
      var c = this.counts(j);
      for (var s = 0; s < STATES.length; s++) { totals[STATES[s]] += c[STATES[s]]; }
      var look = this.look(c);
      var key = look.cls + "|" + look.bg;
      if (this.looks[j] !== key) {
        this.cells[j].className = look.cls;
        this.cells[j].style.background = look.bg;
        this.looks[j] = key;
      }
    }
    var node = this.node;
    node.setAttribute("data-cells", String(n));
    node.setAttribute("data-total", String(grid.total_frames));
    STATES.forEach(function (state) {
      node.setAttribute("data-" + state, String(totals[state]));
      setText("count-" + state, count(totals[state]));
    });
    node.setAttribute("aria-label", "Frame grid: " + totals.rendered + " of " + grid.total_frames +
      " frames rendered, " + (totals.assigned + totals.rerendering) + " out with users, " +
      totals.failed + " refused or failed, " + totals.waiting + " waiting");
    setText("grid-scale", grid.bucket_frames > 1
      ? count(grid.total_frames) + " frames, " + count(grid.bucket_frames) + " to a cell"
      : count(grid.total_frames) + " frames, one cell each");
    if (!this.tip.hidden && this.hot !== undefined) { this.describe(this.hot); }
  };

  FrameGrid.prototype.describe = function (i) {
    var c = this.counts(i);
    var lines = [this.range(i)];
    for (var s = 0; s < STATES.length; s++) {
      var state = STATES[s];
      if (c[state] > 0) {
        lines.push(c.size > 1 ? STATE_LABELS[state] + ": " + count(c[state]) : STATE_LABELS[state]);
      }
    }
    this.tip.textContent = lines.join("\n");
  };

  FrameGrid.prototype.hover = function (event) {
    var target = event.target;
    if (!this.grid || !target || !target.hasAttribute || !target.hasAttribute("data-i")) {
      show(this.tip, false);
      return;
    }
    this.hot = Number(target.getAttribute("data-i"));
    this.describe(this.hot);
    show(this.tip, true);
    var x = event.clientX + 14, y = event.clientY + 14;
    var width = this.tip.offsetWidth, height = this.tip.offsetHeight;
    if (x + width > window.innerWidth - 8) { x = event.clientX - width - 10; }
    if (y + height > window.innerHeight - 8) { y = event.clientY - height - 10; }
    this.tip.style.left = x + "px";
    this.tip.style.top = y + "px";
  };

  // --- the workload page: thumbnails, timeline, users ----------------------------------------

  var RETRIES = 6;

  function thumbnailNode(item) {
    var li = el("li");
    var figure = el("figure", "thumb");
    var img = document.createElement("img");
    img.alt = "Frame " + item.frame;
    img.decoding = "async";
    img.width = 160;
    img.height = 90;
    img.setAttribute("data-frame", String(item.frame));
    var tries = 0;
    img.className = "pending";
    img.addEventListener("load", function () { img.className = ""; });
    img.addEventListener("error", function () {
      // 503 while the thumbnail is being made: ask again a little later.
      img.className = "pending";
      if (tries >= RETRIES) { return; }
      tries += 1;
      setTimeout(function () {
        var sep = item.thumbnail_url.indexOf("?") < 0 ? "?" : "&";
        img.src = item.thumbnail_url + sep + "try=" + tries;
      }, 700 * tries);
    });
    img.src = item.thumbnail_url;
    var pic = el("div", "pic");
    pic.appendChild(img);
    figure.appendChild(pic);
    var caption = el("figcaption");
    caption.appendChild(el("b", "", "#" + item.frame));
    caption.appendChild(document.createTextNode(item.user_id ? " · " + item.user_id + " · " : " · "));
    caption.appendChild(ageNode("span", item.rendered_at));
    figure.appendChild(caption);
    li.appendChild(figure);
    return li;
  }

  function Thumbnails(list, empty) {
    this.list = list;
    this.empty = empty;
    this.nodes = {};
  }

  /* Keeps the <img> of a frame already shown, so a poll does not download it again. */
  Thumbnails.prototype.update = function (items) {
    var kept = {};
    var fragment = document.createDocumentFragment();
    for (var i = 0; i < items.length; i++) {
      var key = items[i].frame + " " + items[i].thumbnail_url;
      var node = this.nodes[key] || thumbnailNode(items[i]);
      kept[key] = node;
      fragment.appendChild(node);
    }
    this.nodes = kept;
    this.list.textContent = "";
    this.list.appendChild(fragment);
    show(this.empty, items.length === 0);
  };

  function kindLabel(kind) { return String(kind || "").replace(/-/g, " "); }

  function timelineNode(event) {
    var li = el("li");
    li.setAttribute("data-kind", event.kind || "");
    var time = el("time", "", clock(event.at));
    time.dateTime = event.at || "";
    time.title = dateTime(event.at);
    li.appendChild(time);
    var kind = el("span", "kind", kindLabel(event.kind));
    kind.setAttribute("data-tone", TONES[event.kind] || "");
    li.appendChild(kind);
    var parts = [];
    if (event.user_id) { parts.push(event.user_id); }
    if (isNumber(event.frames)) { parts.push(event.frames + (event.frames === 1 ? " frame" : " frames")); }
    if (event.detail) { parts.push(event.detail); }
    li.appendChild(el("span", "event-text", parts.join(" · ")));
    return li;
  }

  function userRow(user) {
    var tr = el("tr");
    tr.setAttribute("data-user", user.user_id);
    tr.appendChild(el("td", "mono", user.user_id));
    tr.appendChild(el("td", "", user.state));
    tr.appendChild(el("td", "num", count(user.frames_done)));
    tr.appendChild(el("td", "num", fixed(user.frames_per_minute, 1)));
    tr.appendChild(el("td", "num", user.frames_held));
    var heard = el("td");
    heard.appendChild(ageNode("span", user.last_seen_at));
    tr.appendChild(heard);
    tr.appendChild(el("td", "num", user.failures));
    tr.appendChild(user.banned ? el("td", "flag-banned", "banned") : el("td", "muted", "–"));
    return tr;
  }

  function replaceChildren(parent, nodes) {
    var fragment = document.createDocumentFragment();
    for (var i = 0; i < nodes.length; i++) { fragment.appendChild(nodes[i]); }
    parent.textContent = "";
    parent.appendChild(fragment);
  }

  // --- the workload page -----------------------------------------------------------------------

  function workloadPage(root) {
    var grid = new FrameGrid($("grid"), $("grid-tip"));
    var thumbs = new Thumbnails($("thumbs"), $("no-thumbs"));
    var customer = root.getAttribute("data-customer");

    function summary(w, eta) {
      root.setAttribute("data-status", w.status);
      var status = $("status");
      status.textContent = w.status;
      status.setAttribute("data-status", w.status);
      setText("object-id", w.object_id);
      setText("session-id", w.session_id);
      var failure = $("failure");
      failure.textContent = w.failure_reason ? "Failed: " + w.failure_reason : "";
      show(failure, Boolean(w.failure_reason));

      var pct = Math.max(0, Math.min(100, w.progress_percentage || 0));
      $("progress-fill").style.width = pct + "%";
      $("progress").setAttribute("aria-valuenow", String(Math.round(pct)));
      setText("progress-text", count(w.rendered_frames) + " of " + count(w.total_frames) +
        " frames rendered · " + percent(w.progress_percentage) +
        (isNumber(w.recorded_frames) ? " · " + count(w.recorded_frames) + " recorded" : ""));
      // An ended workload has no current rate; the last one would only decay with time.
      setText("fps", ENDED[w.status] ? "–" : rate(w.frames_per_second));
      setText("users-count", w.active_users + " / " + w.target_user_count);
      setText("started", w.started_at ? dateTime(w.started_at) : "not yet");
      setText("finished", w.finished_at ? dateTime(w.finished_at) : "–");

      var etaNode = $("eta");
      etaNode.textContent = etaText(eta, w.status);
      etaNode.setAttribute("data-basis", (eta && eta.eta_basis) || "");
      drawBand($("eta-band"), $("eta-band-range"), $("eta-band-mark"), eta);

      document.title = (ENDED[w.status] ? w.status : Math.floor(pct) + " %") + " · " +
        customer + " · Session Supervisor";
    }

    poll(root.getAttribute("data-api"), {
      data: function (body) {
        var w = body.workload;
        summary(w, body.eta);
        grid.update(body.grid);
        thumbs.update(body.last_frames || []);

        var events = body.timeline || [];
        replaceChildren($("timeline"), events.map(timelineNode));
        show($("no-events"), events.length === 0);

        var users = (body.users && body.users.items) || [];
        replaceChildren($("user-rows"), users.map(userRow));
        show($("no-users"), users.length === 0);
        setText("users-note", body.users && body.users.truncated
          ? "showing " + users.length + " of " + body.users.total
          : (body.users ? body.users.total : 0) + " in all");
        return ENDED[w.status] ? ENDED_POLL_MS : POLL_MS;
      },
      missing: function () {
        root.setAttribute("data-status", "none");
        var status = $("status");
        status.textContent = "no workload";
        status.setAttribute("data-status", "");
        setText("object-id", null);
        setText("session-id", null);
        setText("progress-text", "This customer has no workload yet; the page shows it once one starts.");
        return ENDED_POLL_MS;
      }
    });
  }

  var listRoot = $("workloads");
  var workloadRoot = $("workload");
  if (listRoot) { listPage(listRoot); }
  if (workloadRoot) { workloadPage(workloadRoot); }
})();
