// Streams a job's log into the page with server-sent events. Each event is
// a batch of already-escaped HTML lines; its id is the byte offset reached,
// so a reconnecting EventSource resumes where it stopped.
(function () {
  var log = document.getElementById("log");
  var end = document.getElementById("log-end");
  var state = document.getElementById("state");
  if (!log || !window.EventSource) return;
  var source = new EventSource(log.dataset.events);
  var jumped = false;
  source.addEventListener("log", function (e) {
    log.insertAdjacentHTML("beforeend", e.data);
    if (!jumped && location.hash && document.querySelector(location.hash)) {
      document.querySelector(location.hash).scrollIntoView();
      jumped = true;
    }
  });
  source.addEventListener("end", function (e) {
    source.close();
    end.textContent = "End of log.";
    if (state && state.classList.contains("running")) { state.textContent = "finished"; state.className = "badge none"; }
  });
  source.onerror = function () { end.textContent = "Connection lost; retrying…"; };
})();
