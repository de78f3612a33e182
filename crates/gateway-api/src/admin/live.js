// The live view: each turn event becomes one line at the top of the list.
(function () {
  "use strict";
  var list = document.getElementById("live-turns");
  var state = document.getElementById("live-state");
  var source = new EventSource("/admin/live/events");
  source.onopen = function () { state.textContent = "Live."; };
  source.onerror = function () { state.textContent = "Disconnected; retrying…"; };
  function line(kind, d) {
    switch (kind) {
      case "turn_started": return "started " + d.turn_id + " on " + d.channel + " for " + d.user;
      case "turn_finished": return (d.ok ? "finished " : "failed ") + d.turn_id + " in " + d.duration_ms + " ms (" + d.llm_calls + " model calls, " + d.tool_calls + " tools)";
      case "tool_called": return "tool " + d.tool + (d.ok ? " ok" : " failed " + d.error_kind) + " in " + d.duration_ms + " ms (" + d.turn_id + ")";
      case "llm_call": return "model " + d.model + ": " + d.input_tokens + " in, " + d.output_tokens + " out, " + d.duration_ms + " ms (" + d.turn_id + ")";
      default: return kind;
    }
  }
  ["turn_started", "turn_finished", "tool_called", "llm_call"].forEach(function (kind) {
    source.addEventListener(kind, function (e) {
      var item = document.createElement("li");
      item.className = kind;
      item.textContent = new Date().toISOString().slice(11, 19) + "Z " + line(kind, JSON.parse(e.data));
      list.insertBefore(item, list.firstChild);
      while (list.children.length > 200) { list.removeChild(list.lastChild); }
    });
  });
})();
