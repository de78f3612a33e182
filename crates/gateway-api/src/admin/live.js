// The live view: each turn event becomes one line at the top of the list; a turn's
// streamed text grows one line of its own (its length, or the text with "Show text").
(function () {
  "use strict";
  var list = document.getElementById("live-turns");
  var state = document.getElementById("live-state");
  var showText = document.getElementById("live-show-text");
  var writing = {};
  var source = null;
  function line(kind, d) {
    switch (kind) {
      case "turn_started": return "started " + d.turn_id + " on " + d.channel + " for " + d.user;
      case "turn_finished": return (d.ok ? "finished " : "failed ") + d.turn_id + " in " + d.duration_ms + " ms (" + d.llm_calls + " model calls, " + d.tool_calls + " tools)";
      case "tool_called": return "tool " + d.tool + (d.ok ? " ok" : " failed " + d.error_kind) + " in " + d.duration_ms + " ms (" + d.turn_id + ")";
      case "llm_call": return "model " + d.model + ": " + d.input_tokens + " in, " + d.output_tokens + " out, " + d.duration_ms + " ms (" + d.turn_id + ")";
      case "progress_tool": return "running: tool " + d.tool + (d.ok ? " done" : " failed") + " (" + d.turn_id + ")";
      case "progress_llm": return "running: model call " + d.call + " (" + d.turn_id + ")";
      default: return kind;
    }
  }
  function add(kind, text) {
    var item = document.createElement("li");
    item.className = kind;
    item.textContent = new Date().toISOString().slice(11, 19) + "Z " + text;
    list.insertBefore(item, list.firstChild);
    while (list.children.length > 200) { list.removeChild(list.lastChild); }
    return item;
  }
  function text(d) {
    var w = writing[d.turn_id];
    if (!w || !w.item.parentNode) {
      w = writing[d.turn_id] = { chars: 0, text: "", item: add("progress_text", "") };
    }
    w.chars += d.chars;
    if (typeof d.text === "string") { w.text += d.text; }
    w.item.textContent = "writing " + d.turn_id + " on " + d.channel + ": " + w.chars + " characters" + (w.text ? ": " + w.text : "");
  }
  function connect() {
    if (source) { source.close(); }
    writing = {};
    source = new EventSource("/admin/live/events" + (showText.checked ? "?text=1" : ""));
    source.onopen = function () { state.textContent = showText.checked ? "Live, with text." : "Live."; };
    source.onerror = function () { state.textContent = "Disconnected; retrying…"; };
    ["turn_started", "turn_finished", "tool_called", "llm_call", "progress_tool", "progress_llm"].forEach(function (kind) {
      source.addEventListener(kind, function (e) {
        var d = JSON.parse(e.data);
        if (kind === "turn_finished") { delete writing[d.turn_id]; }
        add(kind, line(kind, d));
      });
    });
    source.addEventListener("progress_text", function (e) { text(JSON.parse(e.data)); });
  }
  showText.addEventListener("change", connect);
  connect();
})();
