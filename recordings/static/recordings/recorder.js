// The recorder page: capture, MediaRecorder with a 1 s timeslice, live upload through uploader.js.

import { ChunkUploader, startRecording } from "./uploader.js";

const TIMESLICE_MS = 1000;
// Best first: H.264 wherever the browser records it, so the MP4 that every browser (iPhones too)
// plays needs no video encode, only its audio (docs/renditions.md). Chrome and Edge record H.264
// into Matroska (built while it uploads, like WebM), Safari into MP4 with AAC (plays everywhere as
// it is); Firefox records VP8/VP9 WebM, which the service encodes to H.264 after `ready`.
const MIME_TYPES = [
  "video/webm;codecs=h264,opus",
  "video/mp4;codecs=avc1.42E01E,mp4a.40.2",
  "video/mp4;codecs=avc1,opus",
  "video/webm;codecs=vp9,opus",
  "video/webm;codecs=vp8,opus",
  "video/webm",
  "video/mp4",
];

const $ = (id) => document.getElementById(id);
const ui = {
  form: $("setup"),
  title: $("title"),
  record: $("record"),
  pause: $("pause"),
  stop: $("stop"),
  timer: $("timer"),
  progress: $("upload-progress"),
  progressText: $("progress-text"),
  status: $("status"),
  preview: $("preview"),
  result: $("result"),
  resultVideo: $("result-video"),
  watchLink: $("watch-link"),
};

const state = { phase: "idle", recorder: null, stream: null, uploader: null, sessionId: null, recordedMs: 0 };
// For the console and the browser tests: what the page is doing, and the queue's per-chunk SHA-256.
window.recorderPage = state;

const clock = { startedAt: 0, pausedAt: 0, pausedMs: 0, ticker: null };

function elapsedMs() {
  if (!clock.startedAt) return 0;
  const until = clock.pausedAt || performance.now();
  return until - clock.startedAt - clock.pausedMs;
}

function showTime() {
  const seconds = Math.floor(elapsedMs() / 1000);
  ui.timer.textContent = `${String(Math.floor(seconds / 60)).padStart(2, "0")}:${String(seconds % 60).padStart(2, "0")}`;
}

function say(message) {
  ui.status.textContent = message;
}

function megabytes(bytes) {
  return `${(bytes / 1e6).toFixed(1)} MB`;
}

function showProgress(progress) {
  ui.progress.max = Math.max(progress.recordedBytes, 1);
  ui.progress.value = progress.storedBytes;
  let text = `Recorded ${progress.recordedChunks} chunks (${megabytes(progress.recordedBytes)}), `;
  text += `uploaded ${progress.storedChunks} (${megabytes(progress.storedBytes)}).`;
  if (progress.offline) text += " Offline: uploads resume when the connection returns.";
  else if (progress.retries) text += ` ${progress.retries} retried.`;
  ui.progressText.textContent = text;
}

function setPhase(phase) {
  state.phase = phase;
  const capturing = phase === "recording" || phase === "paused";
  ui.record.disabled = phase !== "idle" && phase !== "done" && phase !== "failed";
  ui.pause.disabled = !capturing;
  ui.stop.disabled = !capturing;
  ui.pause.textContent = phase === "paused" ? "Resume" : "Pause";
  ui.pause.setAttribute("aria-pressed", String(phase === "paused"));
  for (const input of ui.form.querySelectorAll("input")) input.disabled = capturing || phase === "finishing";
  document.body.dataset.phase = phase;
}

async function captureStream(source) {
  const media = navigator.mediaDevices;
  if (source === "camera") return media.getUserMedia({ video: true, audio: true });
  const screen = await media.getDisplayMedia({ video: true, audio: source === "screen" });
  if (source !== "screen-mic") return screen;
  const microphone = await media.getUserMedia({ audio: true });
  return new MediaStream([...screen.getVideoTracks(), ...microphone.getAudioTracks()]);
}

function pickMimeType() {
  return MIME_TYPES.find((type) => MediaRecorder.isTypeSupported(type)) || "";
}

async function record() {
  ui.result.hidden = true;
  const source = ui.form.elements.source.value;
  try {
    say("Asking for permission…");
    state.stream = await captureStream(source);
  } catch (error) {
    say(`Recording did not start: ${error.message || error.name}.`);
    return;
  }
  const mimeType = pickMimeType();
  const recorder = new MediaRecorder(state.stream, mimeType ? { mimeType } : {});
  try {
    const session = await startRecording("", { title: ui.title.value.trim(), mimeType: recorder.mimeType || mimeType });
    state.sessionId = session.sessionId;
    state.uploader = new ChunkUploader({
      ...session,
      onProgress: showProgress,
      onError: (error) => say(`Upload stopped: ${error.detail || error.message} (${error.code || error.status}).`),
    });
  } catch (error) {
    stopTracks();
    say(`The server did not start a recording: ${error.message}.`);
    return;
  }
  state.recorder = recorder;
  recorder.ondataavailable = (event) => state.uploader.add(event.data);
  recorder.onstop = finish;
  for (const track of state.stream.getVideoTracks()) track.addEventListener("ended", stop); // "Stop sharing"

  ui.preview.srcObject = state.stream;
  ui.preview.hidden = false;
  ui.preview.play().catch(() => {});
  recorder.start(TIMESLICE_MS);
  Object.assign(clock, { startedAt: performance.now(), pausedAt: 0, pausedMs: 0 });
  clock.ticker = setInterval(showTime, 250);
  setPhase("recording");
  say(`Recording (${recorder.mimeType || "default format"}). Chunks upload as you go.`);
}

function togglePause() {
  if (state.phase === "recording") {
    state.recorder.pause();
    clock.pausedAt = performance.now();
    setPhase("paused");
    say("Paused.");
  } else if (state.phase === "paused") {
    state.recorder.resume();
    clock.pausedMs += performance.now() - clock.pausedAt;
    clock.pausedAt = 0;
    setPhase("recording");
    say("Recording.");
  }
}

function stop() {
  if (state.phase !== "recording" && state.phase !== "paused") return;
  state.recordedMs = Math.round(elapsedMs());
  ui.timer.dataset.recordedMs = String(state.recordedMs);
  clearInterval(clock.ticker);
  showTime();
  setPhase("finishing");
  say("Stopping…");
  state.recorder.stop(); // the last chunk arrives, then `finish` runs
}

function stopTracks() {
  state.stream?.getTracks().forEach((track) => track.stop());
  ui.preview.hidden = true;
  ui.preview.srcObject = null;
}

async function finish() {
  stopTracks();
  say("Uploading the last chunks…");
  let recording;
  try {
    recording = await state.uploader.finish({
      onStatus: (status) => say(status === "finalizing" ? "Finalizing…" : "Processing your video…"),
    });
  } catch (error) {
    setPhase("failed");
    say(`The recording could not be finished: ${error.detail || error.message}`);
    return;
  }
  if (recording.status !== "ready") {
    setPhase("failed");
    say(`Processing failed: ${recording.error?.detail || recording.status}`);
    return;
  }
  ui.resultVideo.src = recording.video_url || "";
  if (recording.thumbnail_url) ui.resultVideo.poster = recording.thumbnail_url;
  ui.watchLink.href = recording.watch_url;
  ui.result.hidden = false;
  setPhase("done");
  say(`Your recording is ready: ${recording.duration.toFixed(1)} seconds.`);
}

ui.form.addEventListener("submit", (event) => event.preventDefault());
ui.record.addEventListener("click", record);
ui.pause.addEventListener("click", togglePause);
ui.stop.addEventListener("click", stop);
setPhase("idle");
if (!window.MediaRecorder || !navigator.mediaDevices) {
  ui.record.disabled = true;
  say("This browser cannot record (no MediaRecorder). Try a current Chrome, Edge, Firefox or Safari.");
}
