// The operator console: sign in with an API key, then the native /v1 API of the service that
// served this page. API paths are relative to /console/, so a service behind a path prefix works.
const API = new URL("../v1/", document.baseURI);
const KEY = "speakerid.apiKey";

const $ = (selector, root = document) => root.querySelector(selector);

// Encoding names the service understands, from a MIME type or a file name's extension.
const BY_TYPE = {
  "audio/webm": "WEBM", "video/webm": "WEBM", "audio/ogg": "OGG", "audio/opus": "OGG_OPUS",
  "audio/flac": "FLAC", "audio/x-flac": "FLAC", "audio/wav": "WAV", "audio/x-wav": "WAV",
  "audio/wave": "WAV", "audio/vnd.wave": "WAV", "audio/mpeg": "MP3", "audio/mp3": "MP3",
  "audio/mp4": "M4A", "audio/x-m4a": "M4A", "audio/aac": "AAC", "audio/amr": "AMR",
};
const BY_EXTENSION = {
  webm: "WEBM", ogg: "OGG", oga: "OGG", opus: "OGG_OPUS", flac: "FLAC", wav: "WAV", mp3: "MP3",
  m4a: "M4A", mp4: "M4A", aac: "AAC", amr: "AMR",
};

function encodingOf(blob, name = "") {
  const type = (blob.type || "").split(";")[0].trim().toLowerCase();
  const extension = name.includes(".") ? name.split(".").pop().toLowerCase() : "";
  return BY_TYPE[type] || BY_EXTENSION[extension] || null;
}

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

async function api(path, { method = "GET", body, type } = {}) {
  const headers = { "X-API-Key": sessionStorage.getItem(KEY) || "" };
  if (type) headers["Content-Type"] = type;
  let answer;
  try {
    answer = await fetch(new URL(path, API), { method, headers, body, cache: "no-store" });
  } catch (error) {
    throw new ApiError(0, "network", `The service did not answer (${error.message})`);
  }
  const data = answer.status === 204 ? null : await answer.json().catch(() => null);
  // The key stopped working while signed in (revoked, or the tenant removed): back to the sign-in
  // form, saying why, rather than an error in whichever section asked.
  if (answer.status === 401 && !$("#work").hidden) signOut(KEY_REFUSED);
  if (!answer.ok) {
    const error = data && data.error ? data.error : {};
    throw new ApiError(answer.status, error.code || `http.${answer.status}`, error.message || `HTTP ${answer.status}`);
  }
  return data;
}

function base64Of(blob) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(String(reader.result).split(",", 2)[1] || "");
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(blob);
  });
}

// One microphone stream for the page: it is asked for once, and successive recordings continue
// where the last one ended instead of reopening the device.
let microphone = null;

async function record(seconds, onTick) {
  if (!navigator.mediaDevices || !window.MediaRecorder) {
    throw new ApiError(0, "browser", "This browser cannot record audio (it needs MediaRecorder, and HTTPS or localhost)");
  }
  if (!microphone || microphone.getAudioTracks().every((t) => t.readyState === "ended")) {
    microphone = await navigator.mediaDevices.getUserMedia({
      audio: { echoCancellation: false, noiseSuppression: false, autoGainControl: false },
    });
  }
  const preferred = ["audio/webm;codecs=opus", "audio/ogg;codecs=opus", "audio/mp4"];
  const mimeType = preferred.find((t) => MediaRecorder.isTypeSupported(t));
  const recorder = new MediaRecorder(microphone, mimeType ? { mimeType } : {});
  const chunks = [];
  recorder.ondataavailable = (event) => { if (event.data.size) chunks.push(event.data); };
  const stopped = new Promise((resolve) => { recorder.onstop = resolve; });
  recorder.start();
  for (let left = seconds; left > 0; left--) {
    onTick(left);
    await new Promise((resolve) => setTimeout(resolve, 1000));
  }
  recorder.stop();
  await stopped;
  return new Blob(chunks, { type: recorder.mimeType || mimeType || "audio/webm" });
}

function say(element, text, kind = "") {
  element.replaceChildren(text);
  element.dataset.kind = kind;
}

function node(tag, text, attributes = {}) {
  const element = document.createElement(tag);
  if (text !== undefined && text !== null) element.textContent = text;
  for (const [name, value] of Object.entries(attributes)) element.setAttribute(name, value);
  return element;
}

const fixed = (x, digits = 3) => (typeof x === "number" ? x.toFixed(digits) : "-");

// --- sign in ---------------------------------------------------------------------------------

async function signIn(key) {
  sessionStorage.setItem(KEY, key);
  try {
    await api("speakers?limit=1");
  } catch (error) {
    sessionStorage.removeItem(KEY);
    throw error;
  }
  $("#sign-in").hidden = true;
  $("#work").hidden = false;
  $("#who").hidden = false;
  $("#sections").hidden = false;
  $("#who-text").textContent = "Signed in";
  await listSpeakers();
  $("#speakers-title").setAttribute("tabindex", "-1");
  $("#speakers-title").focus();
}

const KEY_REFUSED = "This key is no longer accepted (it may have been revoked): sign in with a valid key.";

function signOut(reason = "") {
  stopLive();
  sessionStorage.removeItem(KEY);
  say($("#sign-in-status"), reason, reason ? "error" : "");
  $("#work").hidden = true;
  $("#who").hidden = true;
  $("#sections").hidden = true;
  resetList();
  $("#sign-in").hidden = false;
  $("#api-key").value = "";
  $("#api-key").focus();
}

// --- speakers --------------------------------------------------------------------------------

// One page of the list at a time, from the API's offset/limit paging. The API has no filter, so a
// search reads the whole list once (1,000 a request), keeps it until the next Refresh, enroll or
// delete, and pages through the matches here.
const PAGE_SIZE = 50;
const FETCH_SIZE = 1000;
const SEARCH_DELAY_MS = 250;
const list = { offset: 0, search: "", everyone: null, generation: 0, typing: 0 };
const count = (n) => n.toLocaleString("en");

async function everySpeaker() {
  if (!list.everyone) {
    const reading = (async () => {
      const rows = [];
      for (let offset = 0; ; ) {
        const page = await api(`speakers?offset=${offset}&limit=${FETCH_SIZE}`);
        rows.push(...page.speakers);
        offset += page.speakers.length;
        if (!page.speakers.length || offset >= page.total) return rows;
      }
    })();
    reading.catch(() => { if (list.everyone === reading) list.everyone = null; }); // read again next time
    list.everyone = reading;
  }
  return list.everyone;
}

// The page at list.offset (moved back onto the last page when the list has shrunk below it).
async function speakerPage() {
  const lastPage = (total) => Math.max(0, Math.ceil(total / PAGE_SIZE) - 1) * PAGE_SIZE;
  if (list.search) {
    const needle = list.search.toLowerCase();
    const found = (await everySpeaker()).filter((s) => s.speakerId.toLowerCase().includes(needle));
    list.offset = Math.min(list.offset, lastPage(found.length));
    return { speakers: found.slice(list.offset, list.offset + PAGE_SIZE), total: found.length };
  }
  let page = await api(`speakers?offset=${list.offset}&limit=${PAGE_SIZE}`);
  if (!page.speakers.length && list.offset > 0 && page.total > 0) {
    list.offset = lastPage(page.total);
    page = await api(`speakers?offset=${list.offset}&limit=${PAGE_SIZE}`);
  }
  return page;
}

// `reload`: read the list afresh (after a change); paging and searching reuse what was read.
async function listSpeakers({ reload = true } = {}) {
  const status = $("#speakers-status");
  const generation = ++list.generation;
  if (reload) list.everyone = null;
  let page;
  try {
    page = await speakerPage();
  } catch (error) {
    if (generation === list.generation) say(status, `Could not list speakers: ${error.message}`, "error");
    return;
  }
  if (generation !== list.generation) return; // a newer listing (a page, a search) is on its way
  $("#speaker-table tbody").replaceChildren(...page.speakers.map(speakerRow));
  const shown = page.speakers.length;
  const matching = list.search ? ` matching "${list.search}"` : "";
  let said = `Speakers ${count(list.offset + 1)}-${count(list.offset + shown)} of ${count(page.total)}${matching}`;
  if (shown === page.total) said = `${count(shown)} speaker${shown === 1 ? "" : "s"}${matching}`; // one page
  if (!shown) said = list.search ? `No speaker ids contain "${list.search}"` : "No speakers";
  $("#speaker-count").textContent = said;
  pagerButtons(list.offset > 0, list.offset + shown < page.total);
  say(status, page.total || list.search ? "" : "No speakers enrolled yet.");
}

// Previous and Next, enabled when there is a page that way; a button that goes disabled under
// the keyboard's focus hands it to the other one, so focus is never dropped on the page.
function pagerButtons(previous, next) {
  const focused = document.activeElement;
  $("#page-previous").disabled = !previous;
  $("#page-next").disabled = !next;
  if (focused && focused.disabled) {
    const other = focused.id === "page-next" ? $("#page-previous") : $("#page-next");
    (other.disabled ? $("#speaker-search") : other).focus();
  }
}

function turnPage(step) {
  list.offset = Math.max(0, list.offset + step * PAGE_SIZE);
  listSpeakers({ reload: false });
}

function search(now = false) {
  clearTimeout(list.typing);
  const run = () => {
    const wanted = $("#speaker-search").value.trim();
    if (wanted === list.search) return;
    list.search = wanted;
    list.offset = 0;
    listSpeakers({ reload: false });
  };
  if (now) run();
  else list.typing = setTimeout(run, SEARCH_DELAY_MS);
}

function resetList() {
  clearTimeout(list.typing);
  Object.assign(list, { offset: 0, search: "", everyone: null, generation: list.generation + 1 });
  $("#speaker-search").value = "";
}

function speakerRow(speaker) {
  const row = node("tr", null, { "data-speaker": speaker.speakerId });
  row.append(node("th", speaker.speakerId, { scope: "row" }));
  row.append(node("td", speaker.status, { class: `state ${speaker.status}` }));
  row.append(node("td", String(speaker.samples)));
  row.append(node("td", `${fixed(speaker.speechSeconds, 1)} s`));
  const progress = node("progress", null, {
    max: "1", value: String(speaker.progress), "aria-label": `Enrollment progress of ${speaker.speakerId}`,
  });
  const cell = node("td");
  cell.append(progress, node("span", ` ${Math.round(speaker.progress * 100)}%`));
  row.append(cell);
  row.append(node("td", speaker.missing.length ? speaker.missing.join(", ") : "nothing"));
  const remove = node("button", "Delete", { type: "button", "aria-label": `Delete speaker ${speaker.speakerId}` });
  remove.addEventListener("click", () => deleteSpeaker(speaker.speakerId));
  const actions = node("td");
  actions.append(remove);
  row.append(actions);
  return row;
}

async function deleteSpeaker(speakerId) {
  if (!window.confirm(`Delete speaker "${speakerId}" and every sample of theirs? This cannot be undone.`)) return;
  const status = $("#speakers-status");
  try {
    await api(`speakers/${encodeURIComponent(speakerId)}`, { method: "DELETE" });
    await listSpeakers();
    say(status, `Deleted ${speakerId}.`, "ok");
  } catch (error) {
    say(status, `Could not delete ${speakerId}: ${error.message}`, "error");
  }
  $("#refresh").focus();
}

// --- the audio forms -------------------------------------------------------------------------

// Each form has a record button and a file button; `send(blob, name, form)` makes the request
// and returns the nodes that show its answer.
function audioForm(form, send) {
  const result = $(".result", form);
  const buttons = form.querySelectorAll("button");
  async function run(getAudio) {
    if (!form.reportValidity()) return;
    buttons.forEach((b) => { b.disabled = true; });
    form.setAttribute("aria-busy", "true");
    try {
      const [blob, name] = await getAudio();
      say(result, "Sending...");
      result.replaceChildren(...(await send(blob, name, form)));
      result.dataset.kind = "ok";
    } catch (error) {
      say(result, error.status ? `Refused (${error.status} ${error.code}): ${error.message}` : error.message, "error");
    } finally {
      buttons.forEach((b) => { b.disabled = false; });
      form.removeAttribute("aria-busy");
    }
  }
  $('[data-action="record"]', form).addEventListener("click", () =>
    run(async () => {
      const seconds = Number(form.elements.seconds.value);
      const blob = await record(seconds, (left) => say(result, `Recording... ${left} s left`));
      return [blob, "microphone"];
    }),
  );
  $('[data-action="file"]', form).addEventListener("click", () =>
    run(async () => {
      const file = form.elements.file.files[0];
      if (!file) throw new Error("Choose an audio file first.");
      return [file, file.name];
    }),
  );
  form.addEventListener("submit", (event) => event.preventDefault());
}

async function audioJson(blob, name, extra) {
  const encoding = encodingOf(blob, name);
  if (!encoding) throw new Error(`Cannot tell the audio format of ${name}: use FLAC, WAV, MP3, OGG, WEBM, M4A or AMR.`);
  return JSON.stringify({ content: await base64Of(blob), encoding, ...extra });
}

async function enroll(blob, name, form) {
  const speakerId = form.elements.speaker.value.trim();
  const encoding = encodingOf(blob, name);
  const type = (blob.type || "").split(";")[0].trim().toLowerCase();
  // The raw file as the body, with its audio/* type (MediaRecorder's audio/webm;codecs=opus is
  // one), or as octet-stream with ?encoding= when the browser named it otherwise or not at all.
  const typed = type.startsWith("audio/") && BY_TYPE[type];
  if (!typed && !encoding) throw new Error(`Cannot tell the audio format of ${name}: use FLAC, WAV, MP3, OGG, WEBM, M4A or AMR.`);
  const query = typed ? "" : `?encoding=${encodeURIComponent(encoding)}`;
  const status = await api(`speakers/${encodeURIComponent(speakerId)}/enrollments${query}`, {
    method: "POST", body: blob, type: typed ? blob.type : "application/octet-stream",
  });
  await listSpeakers();
  const last = status.lastSample || {};
  const summary = node("p", null, { class: "decision" });
  summary.append(node("strong", status.status === "complete" ? "Complete" : "Sample accepted"),
    ` - ${status.speakerId}: ${status.samples} sample(s), ${fixed(status.speechSeconds, 1)} s of speech, progress ${Math.round(status.progress * 100)}%.`);
  const details = node("p", `This sample: ${fixed(last.speechSeconds, 1)} s of speech, SNR ${fixed(last.snrDb, 1)} dB.` +
    (status.missing.length ? ` Still missing: ${status.missing.join(", ")}.` : ""));
  const warnings = (status.warnings || []).map((w) => node("p", `Note: ${w}`));
  return [summary, details, ...warnings];
}

function scoreLine(score, threshold) {
  return node("p", `Score ${fixed(score)} against threshold ${fixed(threshold)} (${score >= threshold ? "at or above" : "below"}).`);
}

async function identify(blob, name, form) {
  const topK = Math.max(1, Math.min(20, Number(form.elements.top.value) || 5));
  const found = await api("identify", { method: "POST", type: "application/json", body: await audioJson(blob, name, { topK }) });
  const decision = node("p", null, { class: "decision" });
  const speech = node("p", `${fixed(found.speechSeconds, 1)} s of speech in the clip.`);
  if (found.score === null) {  // nobody enrolled: no one to compare with, no score
    decision.append(node("strong", "Unknown speaker"), " - this account has no enrolled speakers to compare with.");
    return [decision, speech];
  }
  decision.append(node("strong", found.speakerId ? `Identified: ${found.speakerId}` : "Unknown speaker"),
    found.speakerId ? "" : " - no enrolled speaker passed the threshold.");
  const table = node("table", null, { class: "candidates" });
  table.append(node("caption", "Top candidates"));
  const head = node("tr");
  head.append(node("th", "Speaker", { scope: "col" }), node("th", "Score", { scope: "col" }), node("th", "Enrollment", { scope: "col" }));
  table.append(head);
  for (const c of found.candidates) {
    const row = node("tr");
    row.append(node("td", c.speakerId), node("td", fixed(c.score)), node("td", c.complete === false ? "incomplete" : "complete"));
    table.append(row);
  }
  return [decision, scoreLine(found.score, found.threshold), table, speech];
}

async function verify(blob, name, form) {
  const speakerId = form.elements.speaker.value.trim();
  const result = await api("verify", { method: "POST", type: "application/json", body: await audioJson(blob, name, { speakerId }) });
  const decision = node("p", null, { class: "decision" });
  decision.append(node("strong", result.match ? `Match: this is ${speakerId}` : `No match: not ${speakerId}`));
  const notes = result.complete === false ? [node("p", `${speakerId}'s enrollment is not complete yet.`)] : [];
  return [decision, scoreLine(result.score, result.threshold), ...notes];
}

// --- live identification ---------------------------------------------------------------------

// The microphone, downsampled in an AudioWorklet to the model's 16 kHz mono 16-bit PCM, goes to
// /v1/identify/stream one frame per FRAME_S; each frame's answer (segments in stream time) is
// listed as it comes. WebSockets cannot send headers, so the key travels in the `apikey` query.
const LIVE_RATE = 16000;
const FRAME_S = 2.5;
const LIVE_KEEP = 50;
let live = null;

function liveUrl() {
  const url = new URL("identify/stream", API);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  url.search = new URLSearchParams({
    apikey: sessionStorage.getItem(KEY) || "", encoding: "LINEAR16", sampleRate: String(LIVE_RATE),
  }).toString();
  return url;
}

function liveAnswer(answer) {
  const range = (a) => `${fixed(a.start, 1)}-${fixed(a.end, 1)} s`;
  if (answer.error) return node("li", `${range(answer)}: refused (${answer.error.code}): ${answer.error.message}`, { "data-kind": "error" });
  if (!answer.segments.length) return node("li", `${range(answer)}: no speech`);
  const item = node("li");
  answer.segments.forEach((segment, i) => {
    if (i) item.append("; ");
    item.append(`${range(segment)}: `, node("strong", segment.speakerId === "unknown" ? "unknown speaker" : segment.speakerId));
  });
  return item;
}

function liveButtons(running) {
  $("#live-start").disabled = running;
  $("#live-stop").disabled = !running;
}

async function startLive() {
  const status = $("#live-status");
  if (live) return;
  if (!navigator.mediaDevices || !window.AudioWorkletNode) {
    say(status, "This browser cannot stream audio (it needs AudioWorklet, and HTTPS or localhost).", "error");
    return;
  }
  liveButtons(true);
  say(status, "Starting...");
  const session = { pending: [], buffered: 0 };
  live = session;
  try {
    if (!microphone || microphone.getAudioTracks().every((t) => t.readyState === "ended")) {
      microphone = await navigator.mediaDevices.getUserMedia({
        audio: { echoCancellation: false, noiseSuppression: false, autoGainControl: false },
      });
    }
    session.context = new AudioContext();
    await session.context.audioWorklet.addModule(new URL("downsampler.js", document.baseURI));
    if (live !== session) throw null; // Stop was pressed while starting: nothing to say
    session.socket = new WebSocket(liveUrl());
    session.socket.binaryType = "arraybuffer";
    await new Promise((resolve, reject) => {
      session.socket.onopen = resolve;
      // Stop pressed while connecting also ends here: then there is nothing to say.
      session.socket.onerror = () => reject(live === session ? new Error("The service refused the live stream's connection.") : null);
    });
  } catch (error) {
    endLive(session);
    if (error) say(status, error.message || String(error), "error");
    return;
  }
  const { socket, context } = session;
  socket.onmessage = (event) => {
    const answer = JSON.parse(event.data);
    if (answer.chunk === undefined && answer.error) {
      say(status, `Refused: ${answer.error.message}`, "error");
      return;
    }
    const list = $("#live-answers");
    list.prepend(liveAnswer(answer));
    while (list.children.length > LIVE_KEEP) list.lastElementChild.remove();
  };
  socket.onclose = (event) => {
    if (live !== session) return;
    endLive(session);
    // A stream the service ends (bad key, idle, too many streams) said why in its last message.
    if (status.dataset.kind !== "error") say(status, `The connection closed (${event.code}).`, "error");
  };
  session.source = context.createMediaStreamSource(microphone);
  session.worklet = new AudioWorkletNode(context, "downsampler", { processorOptions: { rate: LIVE_RATE } });
  session.worklet.port.onmessage = (event) => {
    session.pending.push(event.data);
    session.buffered += event.data.length;
    if (session.buffered < FRAME_S * LIVE_RATE || socket.readyState !== WebSocket.OPEN) return;
    const frame = new Int16Array(session.buffered);
    let at = 0;
    for (const block of session.pending) { frame.set(block, at); at += block.length; }
    session.pending = [];
    session.buffered = 0;
    socket.send(frame.buffer);
  };
  session.source.connect(session.worklet);
  say(status, "Listening: an answer comes every few seconds.", "ok");
}

// Releases what `session` holds; the buttons go back to Start if it is the running one.
function endLive(session) {
  if (live === session) {
    live = null;
    liveButtons(false);
  }
  if (session.source) session.source.disconnect();
  if (session.worklet) session.worklet.port.onmessage = null;
  if (session.context) session.context.close().catch(() => {});
  if (session.socket && session.socket.readyState <= WebSocket.OPEN) session.socket.close(1000, "stopped");
}

function stopLive() {
  if (!live) return;
  endLive(live);
  say($("#live-status"), "Stopped.");
}

// --- wiring ----------------------------------------------------------------------------------

$("#sign-in-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const status = $("#sign-in-status");
  say(status, "Signing in...");
  try {
    await signIn($("#api-key").value.trim());
    say(status, "");
  } catch (error) {
    say(status, error.status === 401 ? "That key was not accepted." : `Could not sign in: ${error.message}`, "error");
    $("#api-key").focus();
  }
});
$("#sign-out").addEventListener("click", () => signOut());
$("#refresh").addEventListener("click", () => listSpeakers());
$("#page-previous").addEventListener("click", () => turnPage(-1));
$("#page-next").addEventListener("click", () => turnPage(1));
$("#speaker-search").addEventListener("input", () => search());
$("#speaker-filter").addEventListener("submit", (event) => {
  event.preventDefault();
  search(true);
});
// A section link moves the keyboard's focus to the section too (sections take focus, tabindex -1).
$("#sections").addEventListener("click", (event) => {
  const link = event.target.closest("a");
  const target = link && document.getElementById(link.hash.slice(1));
  if (target) target.focus();
});
audioForm($("#enroll-form"), enroll);
audioForm($("#identify-form"), identify);
audioForm($("#verify-form"), verify);
$("#live-start").addEventListener("click", startLive);
$("#live-stop").addEventListener("click", stopLive);

// A reload signs in again with the tab's key. If that fails, the sign-in form says why: a key the
// service refuses is forgotten; a service that did not answer keeps it, for the next reload.
if (sessionStorage.getItem(KEY)) {
  const saved = sessionStorage.getItem(KEY);
  signIn(saved).catch((error) => {
    if (error.status === 401) {
      signOut(KEY_REFUSED);
    } else {
      signOut(`Could not sign in again: ${error.message}`);
      sessionStorage.setItem(KEY, saved);
    }
  });
}
