// nexor-relay replay: plays a console recording (docs/recording.md).
//   cast: fetches /recording.cast (asciicast v3) and plays it into xterm.js;
//   vnc:  noVNC connects to /replay, where the relay is the RFB server and
//         streams the recorded server messages with their timing.
// Controls: pause/resume and speed (URL ?speed=N, 0 = as fast as possible).
import RFB from "@@NOVNC@@/core/rfb.js";

const kind = "@@KIND@@";
const status = document.getElementById("status");
const clock = document.getElementById("clock");
const screen = document.getElementById("screen");
const pauseBtn = document.getElementById("pause");
const speedSel = document.getElementById("speed");
const query = new URLSearchParams(location.search);
let speed = Number(query.get("speed") || "1");
if (!(speed >= 0)) speed = 1;
if (![...speedSel.options].some((o) => Number(o.value) === speed)) {
  speedSel.add(new Option(speed === 0 ? "max" : speed + "×", String(speed)));
}
speedSel.value = String(speed);
let paused = false;
window.nexor = { kind, events: [], replay: { done: false, at: 0, total: 0, paused: false, speed } };
const fmt = (s) => s.toFixed(1) + " s";
const show = () => { clock.textContent = fmt(window.nexor.replay.at) + " / " + fmt(window.nexor.replay.total); };

function onControl(fn) {
  pauseBtn.addEventListener("click", () => {
    paused = !paused;
    pauseBtn.textContent = paused ? "resume" : "pause";
    window.nexor.replay.paused = paused;
    fn();
  });
  speedSel.addEventListener("change", () => {
    speed = Number(speedSel.value);
    window.nexor.replay.speed = speed;
    fn();
  });
}

async function playCast() {
  const text = await (await fetch("/recording.cast")).text();
  const lines = text.split("\n").filter((l) => l.length > 0);
  const header = JSON.parse(lines[0]);
  const events = [];
  let t = 0;
  for (const l of lines.slice(1)) {
    let e;
    try { e = JSON.parse(l); } catch { continue; } // a cut last line
    t += Number(e[0]) || 0;
    events.push([t, e[1], e[2]]);
  }
  window.nexor.replay.total = t;
  const term = new Terminal({ cols: header.term.cols, rows: header.term.rows, convertEol: false });
  term.open(screen);
  window.nexor.term = term;
  status.textContent = (header.title || "recording") + " · " + new Date(header.timestamp * 1000).toISOString();
  window.nexor.events.push("connect");
  let i = 0;
  let timer = null;
  let at = 0; // recording time shown
  const step = () => {
    timer = null;
    while (i < events.length && events[i][0] <= at + 1e-9) {
      const [, code, data] = events[i++];
      if (code === "o") term.write(data);
      else if (code === "r") {
        const [c, r] = data.split("x").map(Number);
        if (c > 0 && r > 0) term.resize(c, r);
      }
    }
    window.nexor.replay.at = at;
    show();
    if (i >= events.length) {
      window.nexor.replay.done = true;
      window.nexor.events.push("done");
      return;
    }
    if (paused) return;
    const next = events[i][0];
    const wait = speed === 0 ? 0 : ((next - at) * 1000) / speed;
    at = next;
    timer = setTimeout(step, Math.min(wait, 2 ** 31 - 1));
  };
  onControl(() => {
    if (timer !== null) { clearTimeout(timer); timer = null; }
    if (!paused && !window.nexor.replay.done) step();
  });
  step();
}

function playVnc() {
  const url = (location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/replay?speed=" + speed;
  const rfb = new RFB(screen, url, { wsProtocols: ["binary"], shared: true });
  rfb.viewOnly = true;
  rfb.scaleViewport = true;
  window.nexor.rfb = rfb;
  rfb.addEventListener("connect", () => { window.nexor.events.push("connect"); });
  rfb.addEventListener("desktopname", (e) => { window.nexor.desktopName = e.detail.name; status.textContent = "replaying: " + e.detail.name; });
  rfb.addEventListener("disconnect", (e) => { window.nexor.events.push(e.detail.clean ? "disconnect-clean" : "disconnect-error"); status.textContent = "replay server gone"; });
  onControl(() => { fetch("/control?speed=" + speed + "&pause=" + (paused ? 1 : 0)); });
  const poll = async () => {
    try {
      const s = await (await fetch("/status")).json();
      Object.assign(window.nexor.replay, { at: s.at, total: s.total, done: s.done });
      show();
      if (s.done && !window.nexor.events.includes("done")) window.nexor.events.push("done");
    } catch { /* the server stopped */ }
    setTimeout(poll, 300);
  };
  poll();
}

if (kind === "cast") playCast(); else playVnc();
