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

// --- The video's files: one <source> each, best first ------------------------------------------

// The API lists the recording's files in the order a player should try them: the MP4 (H.264 +
// AAC, which every browser plays, iPhones too) once it is made, then the recorded video. Each
// <source> carries its type with codecs, so a browser skips what it says it cannot play.
function servedSources(recording) {
  const served = (recording.renditions || []).filter((rendition) => rendition.url);
  return served.length ? served : [{ name: "original", url: recording.video_url, type: "" }];
}

function mp4Of(recording) {
  return (recording.renditions || []).find((rendition) => rendition.name === "mp4");
}

function setSources(recording) {
  const video = $("video");
  video.querySelectorAll("source").forEach((source) => source.remove());
  const sources = servedSources(recording).map(({ url, type }) => {
    const source = document.createElement("source");
    source.src = url;
    if (type) source.type = type;
    return source;
  });
  video.prepend(...sources);
  video.load();
  // An error on the last <source> means the browser played none of them.
  sources[sources.length - 1].addEventListener("error", () => {
    unplayable = true;
    $("status").textContent = mp4Of(recording)?.status === "pending"
      ? "This browser cannot play the recorded format; a version it plays is being made…"
      : "This browser cannot play this recording's format; download it instead.";
  }, { once: true });
  const mp4 = mp4Of(recording);
  $("download-mp4").hidden = !mp4?.url;
  if (mp4?.url) $("download-mp4").href = withDownload(mp4.url);
}

// While the MP4 is being made, the page looks again now and then. Once it is there, a browser that
// played nothing of the recorded video (or only its sound: some WebKit versions play a WebM's audio
// and no picture) gets it; one that plays the recording already keeps playing undisturbed.
let unplayable = false;
let renditionWaitMs = 2000;

function playsPicture(recording) {
  const video = $("video");
  return !unplayable && video.readyState >= 1 && (!recording.has_video || video.videoWidth > 0);
}

async function waitForRendition(recording) {
  if (mp4Of(recording)?.status !== "pending") return;
  await new Promise((resolve) => setTimeout(resolve, renditionWaitMs));
  renditionWaitMs = Math.min(renditionWaitMs * 2, 15_000);
  let latest;
  try {
    const response = await fetch(page.dataset.statusUrl);
    latest = response.ok ? await response.json() : recording; // a throttled or failed look: again later
  } catch {
    latest = recording;
  }
  if (latest.status !== "ready") return; // processed again, deleted or expired: the page's first load says so
  const mp4 = mp4Of(latest);
  if (!mp4?.url) return waitForRendition(latest);
  if (!playsPicture(latest)) {
    unplayable = false;
    $("status").textContent = "Ready.";
    setSources(latest);
  } else {
    $("download-mp4").href = withDownload(mp4.url);
    $("download-mp4").hidden = false;
  }
}

function show(recording) {
  const video = $("video");
  if (recording.thumbnail_url) video.poster = recording.thumbnail_url;
  setSources(recording);
  $("download-video").href = withDownload(recording.video_url);
  waitForRendition(recording);
  if (recording.audio_url) {
    $("audio").src = recording.audio_url;
    $("download-audio").href = withDownload(recording.audio_url);
  } else {
    $("audio").hidden = true;
    $("download-audio").hidden = true;
    $("no-audio").hidden = false;
  }
  $("duration").textContent = recording.duration ? duration(recording.duration) : "–";
  $("resolution").textContent = recording.width ? `${recording.width} × ${recording.height}` : "audio only";
  $("size").textContent = recording.size ? size(recording.size) : "–";
  $("created").textContent = new Date(recording.created_at).toLocaleString();
  showWarnings(recording.warnings || []);
  $("media").hidden = false;
  $("status").textContent = "Ready.";
  showCaptions(recording);
}

// --- Captions and the transcript -------------------------------------------------------------

const CAPTIONS_STATES = {
  pending: "Captions are being made…",
  none: "This recording has no audio, so no captions.",
  failed: "Captions could not be made for this recording.",
  off: "",
  unavailable: "",
};
let captionsWaitMs = 500;
// A paragraph starts after a pause this long (seconds).
const PARAGRAPH_PAUSE = 1.5;

async function showCaptions(recording) {
  if (recording.captions_status !== "ready" || !recording.captions_url) {
    $("captions-status").textContent = CAPTIONS_STATES[recording.captions_status] ?? "";
    if (recording.captions_status === "pending") {
      setTimeout(async () => {
        try {
          showCaptions(await (await fetch(page.dataset.statusUrl)).json());
        } catch {
          showCaptions(recording);
        }
      }, captionsWaitMs);
      captionsWaitMs = Math.min(captionsWaitMs * 2, 4000);
    }
    return;
  }
  $("captions-status").textContent = "";
  const track = document.createElement("track");
  Object.assign(track, {
    kind: "captions",
    src: recording.captions_url,
    srclang: recording.captions_language || "en",
    label: recording.captions_language === "en" || !recording.captions_language ? "English" : recording.captions_language,
    default: true,
  });
  track.id = "captions-track";
  $("video").append(track);
  try {
    const transcript = await (await fetch(recording.transcript_url)).json();
    showTranscript(transcript.words || []);
  } catch {
    $("captions-status").textContent = "The transcript could not be loaded.";
  }
}

function showTranscript(words) {
  const container = $("transcript");
  const paragraphs = [];
  let paragraph = null;
  let previousEnd = -Infinity;
  for (const word of words) {
    if (!paragraph || word.start - previousEnd >= PARAGRAPH_PAUSE) {
      paragraph = document.createElement("p");
      paragraphs.push(paragraph);
    }
    const button = document.createElement("button");
    button.type = "button";
    button.className = "word";
    button.textContent = word.word;
    button.dataset.start = word.start;
    button.dataset.end = word.end;
    button.title = `${word.start.toFixed(1)} s`;
    paragraph.append(button, " ");
    previousEnd = word.end;
  }
  container.replaceChildren(...paragraphs);
  if (!words.length) container.textContent = "No speech was heard in this recording.";
  $("transcript-panel").hidden = false;
}

$("transcript").addEventListener("click", (event) => {
  const word = event.target.closest("button.word");
  if (!word) return;
  const video = $("video");
  video.currentTime = Number(word.dataset.start);
  video.play().catch(() => {});
});

// The word being spoken is marked as the video plays.
$("video").addEventListener("timeupdate", () => {
  const time = $("video").currentTime;
  for (const spoken of document.querySelectorAll("#transcript .word.current")) spoken.classList.remove("current");
  for (const word of document.querySelectorAll("#transcript .word")) {
    if (Number(word.dataset.start) <= time && time < Number(word.dataset.end)) {
      word.classList.add("current");
      break;
    }
  }
});

const searchable = (text) => text.toLowerCase().replace(/[^\p{L}\p{N}' ]+/gu, " ").trim();

$("transcript-search").addEventListener("input", () => {
  const wanted = searchable($("transcript-search").value).split(/\s+/).filter(Boolean);
  const words = [...document.querySelectorAll("#transcript .word")];
  for (const word of words) word.classList.remove("match");
  if (!wanted.length) {
    $("transcript-matches").textContent = "";
    return;
  }
  const spoken = words.map((word) => searchable(word.textContent));
  let matches = 0;
  for (let at = 0; at + wanted.length <= words.length; at += 1) {
    // every word of the query in a row; the last may be the start of a word (search as you type)
    const found = wanted.every((part, offset) =>
      offset === wanted.length - 1 ? spoken[at + offset].startsWith(part) : spoken[at + offset] === part,
    );
    if (!found) continue;
    matches += 1;
    for (let offset = 0; offset < wanted.length; offset += 1) words[at + offset].classList.add("match");
  }
  $("transcript-matches").textContent = matches === 1 ? "1 match" : `${matches} matches`;
  document.querySelector("#transcript .word.match")?.scrollIntoView({ block: "nearest" });
});

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
