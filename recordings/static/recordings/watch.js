// The watch page: fills the player, the audio, the details and the links from the JSON API.

const $ = (id) => document.getElementById(id);
const page = $("watch");
const POLL_MS = 1500;
// A page opened at Stop usually finds the recording ready within a second: look again soon at first.
let waitMs = 100;

function duration(seconds) {
  const whole = Math.round(seconds);
  return `${Math.floor(whole / 60)}:${String(whole % 60).padStart(2, "0")} (${seconds.toFixed(1)} s)`;
}

function size(bytes) {
  return bytes >= 1e9 ? `${(bytes / 1e9).toFixed(2)} GB` : `${(bytes / 1e6).toFixed(1)} MB`;
}

function withDownload(url) {
  return `${url}${url.includes("?") ? "&" : "?"}download=1`;
}

function showWarnings(warnings) {
  const list = $("warning-list");
  list.replaceChildren(
    ...warnings.map((warning) => {
      const item = document.createElement("li");
      item.dataset.code = warning.code;
      item.textContent = warning.detail;
      return item;
    }),
  );
  $("warnings").hidden = warnings.length === 0;
}

function show(recording) {
  const video = $("video");
  if (recording.thumbnail_url) video.poster = recording.thumbnail_url;
  video.src = recording.video_url;
  if (recording.audio_url) {
    $("audio").src = recording.audio_url;
    $("download-audio").href = withDownload(recording.audio_url);
  } else {
    $("audio").hidden = true;
    $("download-audio").hidden = true;
    $("no-audio").hidden = false;
  }
  $("download-video").href = withDownload(recording.video_url);
  $("duration").textContent = recording.duration ? duration(recording.duration) : "–";
  $("resolution").textContent = recording.width ? `${recording.width} × ${recording.height}` : "audio only";
  $("size").textContent = recording.size ? size(recording.size) : "–";
  $("created").textContent = new Date(recording.created_at).toLocaleString();
  showWarnings(recording.warnings || []);
  $("media").hidden = false;
  $("status").textContent = "Ready.";
}

async function load() {
  let recording;
  try {
    const response = await fetch(page.dataset.statusUrl);
    recording = await response.json();
  } catch {
    $("status").textContent = "The server did not answer; trying again…";
    setTimeout(load, POLL_MS);
    return;
  }
  if (recording.status === "ready") return show(recording);
  if (recording.status === "failed") {
    $("status").textContent = `This recording could not be processed: ${recording.error?.detail || "unknown error"}`;
    return;
  }
  $("status").textContent = `This recording is ${recording.status}; the page updates when it is ready.`;
  setTimeout(load, waitMs);
  waitMs = Math.min(waitMs * 2, POLL_MS);
}

$("copy-link").addEventListener("click", async () => {
  try {
    await navigator.clipboard.writeText(window.location.href);
    $("copy-status").textContent = "Link copied.";
  } catch {
    $("copy-status").textContent = `Copy this link: ${window.location.href}`;
  }
});

load();
