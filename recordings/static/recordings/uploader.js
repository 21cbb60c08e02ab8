// Recorder's upload queue: posts MediaRecorder chunks while recording, and survives a bad network.
//
// One file, no dependencies, no build step: a page or a browser extension can copy it as it is.
//
//   import { ChunkUploader, startRecording } from "./uploader.js";
//   // H.264 where the browser records it: the MP4 for Safari and iPhones then needs no video encode
//   const mimeType = ["video/webm;codecs=h264,opus", "video/mp4;codecs=avc1.42E01E,mp4a.40.2",
//     "video/webm;codecs=vp9,opus"].find((type) => MediaRecorder.isTypeSupported(type));
//   const recorder = new MediaRecorder(stream, mimeType ? { mimeType } : {});
//   const session = await startRecording(apiBase, { title, mimeType: recorder.mimeType });
//   const uploader = new ChunkUploader({ apiBase, ...session, onProgress: (p) => render(p) });
//   recorder.ondataavailable = (event) => uploader.add(event.data);
//   recorder.start(1000);                       // a chunk every second
//   ...
//   recorder.onstop = async () => { const recording = await uploader.finish(); };
//
// What it promises (see the README, "How to write a client"):
// - every chunk is posted with an explicit `chunk_index` and its SHA-256, so retries, duplicates and
//   reordering are harmless: the server stores each index once and checks the bytes;
// - at most `maxInFlight` uploads at a time, in index order;
// - network errors and 5xx (and 429) are retried with exponential backoff and jitter; any other 4xx
//   is final: it stops the queue and is reported, because sending it again cannot succeed;
// - while the browser is offline nothing is sent; back online, it asks the server which chunks it
//   already holds (an upload may have landed even though its answer was lost) and sends the rest;
// - a chunk's bytes are dropped once the server has acknowledged them, so memory holds only what is
//   still unconfirmed;
// - `finish()` waits for every chunk, finalizes with `total_chunks` and polls until the recording
//   is `ready` or `failed`.

const RETRYABLE_STATUSES = new Set([408, 429, 500, 502, 503, 504, 507]);

export class UploadError extends Error {
  constructor(message, { status = 0, code = "", detail = "" } = {}) {
    super(message);
    this.name = "UploadError";
    this.status = status;
    this.code = code;
    this.detail = detail;
  }
}

async function errorBody(response) {
  try {
    return await response.json();
  } catch {
    return {};
  }
}

async function sha256Hex(blob) {
  const digest = await crypto.subtle.digest("SHA-256", await blob.arrayBuffer());
  return Array.from(new Uint8Array(digest), (byte) => byte.toString(16).padStart(2, "0")).join("");
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** POST /api/start-recording/: `{ sessionId, uploadToken }` for a new recording. */
export async function startRecording(apiBase, { title = "", mimeType = "" } = {}) {
  const response = await fetch(`${apiBase}/api/start-recording/`, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ title, mime_type: mimeType }),
  });
  const body = await errorBody(response);
  if (!response.ok) {
    throw new UploadError(body.detail || `start-recording answered ${response.status}`, { status: response.status, ...body });
  }
  return { sessionId: body.session_id, uploadToken: body.upload_token };
}

export class ChunkUploader {
  constructor({
    apiBase = "",
    sessionId,
    uploadToken,
    maxInFlight = 3,
    firstRetryMs = 500,
    maxRetryMs = 15000,
    pollMs = 1000,
    onProgress = () => {},
    onError = () => {},
  }) {
    this.apiBase = apiBase.replace(/\/$/, "");
    this.sessionId = sessionId;
    this.uploadToken = uploadToken;
    this.maxInFlight = maxInFlight;
    this.firstRetryMs = firstRetryMs;
    this.maxRetryMs = maxRetryMs;
    this.pollMs = pollMs;
    this.onProgress = onProgress;
    this.onError = onError;

    this.chunks = []; // index → { blob, size, sha256, state: "waiting" | "sending" | "stored", attempts, notBefore }
    this.chunkDigests = []; // index → SHA-256 hex, kept after the bytes are dropped
    this.inFlight = 0;
    this.recordedBytes = 0;
    this.storedBytes = 0;
    this.storedChunks = 0;
    this.retries = 0;
    this.failure = null;
    this.offline = typeof navigator !== "undefined" && navigator.onLine === false;
    this._idle = [];
    this._timer = null;
    this._resyncing = null;
    if (typeof window !== "undefined") {
      window.addEventListener("offline", () => {
        this.offline = true;
        this._report();
      });
      window.addEventListener("online", () => {
        this.offline = false;
        this.resume();
      });
    }
  }

  /** Queue the next chunk (empty blobs are skipped: they carry nothing). Returns its index. */
  add(blob) {
    if (!blob || blob.size === 0) return null;
    const index = this.chunks.length;
    const chunk = { blob, size: blob.size, sha256: sha256Hex(blob), state: "waiting", attempts: 0, notBefore: 0 };
    this.chunks.push(chunk);
    this.recordedBytes += blob.size;
    chunk.sha256.then((hex) => (this.chunkDigests[index] = hex));
    this._pump();
    return index;
  }

  /** Ask the server which chunks it holds, mark them stored, and send the rest. */
  async resume() {
    if (!this._resyncing) {
      this._resyncing = this._resync().finally(() => (this._resyncing = null));
    }
    await this._resyncing;
    this._pump();
  }

  /** Wait until every chunk is stored, finalize, and poll until the recording is ready or failed. */
  async finish({ onStatus = () => {} } = {}) {
    await this.drained();
    onStatus("finalizing");
    let recording = await this._send(() =>
      fetch(`${this.apiBase}/api/finalize-recording/`, {
        method: "POST",
        headers: { ...this._auth(), "Content-Type": "application/json" },
        body: JSON.stringify({ session_id: this.sessionId, is_final: true, total_chunks: this.chunks.length }),
      }),
    );
    // Most recordings are ready a moment after Stop (the live build): look again soon, then less often.
    let waitMs = Math.min(100, this.pollMs);
    while (recording.status !== "ready" && recording.status !== "failed") {
      onStatus(recording.status);
      await sleep(waitMs);
      waitMs = Math.min(waitMs * 2, this.pollMs);
      recording = await this._send(() => fetch(`${this.apiBase}/api/get-recorded-data/${this.sessionId}/`));
    }
    return recording;
  }

  /** Resolves once every queued chunk is stored; rejects if the queue stopped on a final error. */
  drained() {
    if (this.failure) return Promise.reject(this.failure);
    if (this._allStored()) return Promise.resolve();
    return new Promise((resolve, reject) => this._idle.push({ resolve, reject }));
  }

  progress() {
    return {
      recordedChunks: this.chunks.length,
      recordedBytes: this.recordedBytes,
      storedChunks: this.storedChunks,
      storedBytes: this.storedBytes,
      inFlight: this.inFlight,
      retries: this.retries,
      offline: this.offline,
      failed: this.failure,
    };
  }

  // --- internals -------------------------------------------------------------------------------

  _auth() {
    return { Authorization: `Bearer ${this.uploadToken}` };
  }

  _allStored() {
    return this.chunks.every((chunk) => chunk.state === "stored");
  }

  _report() {
    this.onProgress(this.progress());
    if (this.failure) {
      this._idle.splice(0).forEach(({ reject }) => reject(this.failure));
    } else if (this._allStored()) {
      this._idle.splice(0).forEach(({ resolve }) => resolve());
    }
  }

  _pump() {
    if (this.failure || this.offline || this._resyncing) return this._report();
    const now = Date.now();
    let wakeAt = Infinity;
    for (let index = 0; index < this.chunks.length && this.inFlight < this.maxInFlight; index++) {
      const chunk = this.chunks[index];
      if (chunk.state !== "waiting") continue;
      if (chunk.notBefore > now) {
        wakeAt = Math.min(wakeAt, chunk.notBefore);
        continue;
      }
      this._upload(index, chunk);
    }
    if (wakeAt !== Infinity && !this._timer) {
      this._timer = setTimeout(() => {
        this._timer = null;
        this._pump();
      }, wakeAt - now);
    }
    this._report();
  }

  async _upload(index, chunk) {
    chunk.state = "sending";
    chunk.attempts += 1;
    this.inFlight += 1;
    try {
      const form = new FormData();
      form.append("session_id", this.sessionId);
      form.append("chunk_index", String(index));
      form.append("checksum", `sha256:${await chunk.sha256}`);
      form.append("video_chunk", chunk.blob, `chunk-${index}`);
      const response = await fetch(`${this.apiBase}/api/receive-video-chunk/`, {
        method: "POST",
        headers: this._auth(),
        body: form,
      });
      if (response.ok) {
        this._stored(chunk);
      } else if (RETRYABLE_STATUSES.has(response.status)) {
        this._retryLater(chunk, response);
      } else {
        const body = await errorBody(response);
        chunk.state = "waiting";
        this.failure = new UploadError(body.detail || `chunk ${index} answered ${response.status}`, {
          status: response.status,
          ...body,
        });
        this.onError(this.failure);
      }
    } catch (networkError) {
      this._retryLater(chunk, null); // fetch rejects only when no answer arrived: always worth a retry
      if (typeof navigator !== "undefined" && navigator.onLine === false) this.offline = true;
    } finally {
      this.inFlight -= 1;
      this._pump();
    }
  }

  _stored(chunk) {
    if (chunk.state === "stored") return;
    chunk.state = "stored";
    chunk.blob = null; // the server has it: let the bytes go
    this.storedChunks += 1;
    this.storedBytes += chunk.size;
  }

  _retryLater(chunk, response) {
    this.retries += 1;
    chunk.state = "waiting";
    const backoffMs = Math.min(this.maxRetryMs, this.firstRetryMs * 2 ** (chunk.attempts - 1));
    const retryAfterMs = Number(response?.headers.get("Retry-After")) * 1000 || 0;
    chunk.notBefore = Date.now() + Math.max(retryAfterMs, backoffMs * (0.5 + Math.random() / 2));
  }

  async _resync() {
    const recording = await this._send(() => fetch(`${this.apiBase}/api/get-recorded-data/${this.sessionId}/`));
    for (const [first, last] of recording.received_ranges || []) {
      for (let index = first; index <= last && index < this.chunks.length; index++) {
        const chunk = this.chunks[index];
        if (chunk.state !== "sending") this._stored(chunk);
      }
    }
  }

  /** A JSON request retried like a chunk: network errors and retryable statuses wait and go again. */
  async _send(request) {
    for (let attempt = 1; ; attempt++) {
      let response = null;
      try {
        response = await request();
      } catch {
        response = null;
      }
      if (response && !RETRYABLE_STATUSES.has(response.status)) {
        const body = await errorBody(response);
        if (!response.ok) {
          throw new UploadError(body.detail || `answered ${response.status}`, { status: response.status, ...body });
        }
        return body;
      }
      this.retries += 1;
      await sleep(Math.min(this.maxRetryMs, this.firstRetryMs * 2 ** (attempt - 1)) * (0.5 + Math.random() / 2));
    }
  }
}
