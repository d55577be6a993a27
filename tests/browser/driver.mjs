// Drives headless Chromium (playwright-core) for tests/browser.rs.
//
// Protocol: one JSON command per line on stdin, one JSON answer per line on stdout
// ({"id", "ok": true, "value"} or {"id", "ok": false, "error"}). The first stdout line is
// {"ready": true, "version": "..."} once Chromium runs. EOF on stdin (the test process
// ended) closes the browser and exits, so nothing outlives the test.
//
// Commands (`page` names a page; each page has its own fresh browser context):
//   open   {page, url}                 new context + page, WebSocket hook, goto url
//   wait   {page, expr, timeout}       until the JS expression is truthy; its value
//   eval   {page, expr}                the JS expression's value
//   canvas {page}                      noVNC's canvas: {width, height, rgba (base64)}
//   type   {page, text}                focus xterm.js, type text, press Enter
//   vnc_type {page, text}              click noVNC's canvas, type text, press Enter
//   shot   {page, path, canvas?}       PNG screenshot (of the page or just the canvas)
//   reload {page} / close {page}
//   dump   {dir, prefix}               screenshots and logs of every open page
//   quit
import { chromium } from "playwright-core";
import fs from "node:fs";
import path from "node:path";
import readline from "node:readline";

const ARGS = [
  "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
  "--disable-background-networking", "--disable-component-update", "--disable-sync",
  "--disable-dev-shm-usage",
  // Accept the test CA's certificates in the TLS layer itself. ignoreHTTPSErrors alone
  // makes Chromium abort the first handshake of every connection (an alert after the
  // server's certificate) and redo it: twice the connections, and a flood of refused
  // handshakes in the relay's audit log.
  "--ignore-certificate-errors",
  // *.localhost names (HAProxy routes relay-1.localhost / relay-2.localhost by SNI) and
  // localhost itself go to 127.0.0.1, where the proxies listen.
  "--host-resolver-rules=MAP localhost 127.0.0.1, MAP *.localhost 127.0.0.1",
];

// Records every WebSocket's open and close (code, reason, clean) as the page sees them.
const WS_HOOK = `(() => {
  const Orig = window.WebSocket;
  window.__ws = [];
  window.WebSocket = function (url, protocols) {
    const ws = protocols === undefined ? new Orig(url) : new Orig(url, protocols);
    const rec = { url: String(url).replace(/ticket\\.[^,]*/, "ticket.*"), open: false, protocol: null, close: null };
    window.__ws.push(rec);
    ws.addEventListener("open", () => { rec.open = true; rec.protocol = ws.protocol; });
    ws.addEventListener("close", (e) => { rec.close = { code: e.code, reason: e.reason, clean: e.wasClean }; });
    return ws;
  };
  window.WebSocket.prototype = Orig.prototype;
  for (const k of ["CONNECTING", "OPEN", "CLOSING", "CLOSED"]) window.WebSocket[k] = Orig[k];
})();`;

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: ARGS,
});
const pages = new Map(); // name -> { ctx, page, log: [] }

function out(obj) {
  process.stdout.write(JSON.stringify(obj) + "\n");
}

function get(name) {
  const p = pages.get(name);
  if (!p) throw new Error(`no page ${name}`);
  return p;
}

async function open({ page: name, url, viewport }) {
  if (pages.has(name)) await closePage(name);
  const ctx = await browser.newContext({
    ignoreHTTPSErrors: true,
    viewport: viewport || { width: 1024, height: 720 },
  });
  await ctx.addInitScript(WS_HOOK);
  const page = await ctx.newPage();
  const log = [];
  page.on("console", (m) => log.push(`[console.${m.type()}] ${m.text()}`));
  page.on("pageerror", (e) => log.push(`[pageerror] ${e}`));
  page.on("requestfailed", (r) => log.push(`[requestfailed] ${r.url().split("#")[0]} ${r.failure()?.errorText}`));
  page.on("websocket", (ws) => {
    log.push(`[websocket] open ${ws.url().split("?")[0]}`);
    ws.on("close", () => log.push(`[websocket] closed`));
    ws.on("socketerror", (e) => log.push(`[websocket] error ${e}`));
  });
  pages.set(name, { ctx, page, log });
  await page.goto(url, { waitUntil: "load", timeout: 20000 });
  return null;
}

async function closePage(name) {
  const p = pages.get(name);
  if (!p) return null;
  pages.delete(name);
  await p.ctx.close();
  return null;
}

const CANVAS = `(() => {
  const c = document.querySelector("#screen canvas");
  if (!c) return null;
  const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
  let s = "";
  const CH = 0x8000;
  for (let i = 0; i < d.length; i += CH) s += String.fromCharCode.apply(null, d.subarray(i, i + CH));
  return { width: c.width, height: c.height, rgba: btoa(s) };
})()`;

async function run(cmd) {
  switch (cmd.op) {
    case "open":
      return open(cmd);
    case "wait": {
      // Polls with evaluate (CDP), not waitForFunction: the console page's CSP has no
      // 'unsafe-eval', and the test must not loosen it (bypassCSP) to look inside.
      const { page } = get(cmd.page);
      const deadline = Date.now() + (cmd.timeout || 15000);
      let last;
      for (;;) {
        try { last = await page.evaluate(cmd.expr); } catch (e) { last = `error: ${e.message}`; if (!/Execution context was destroyed|navigat/.test(e.message)) throw e; }
        if (last && !(typeof last === "string" && last.startsWith("error: "))) return last;
        if (Date.now() > deadline) throw new Error(`timeout ${cmd.timeout}ms waiting for ${cmd.expr.slice(0, 200)} (last: ${JSON.stringify(last)})`);
        await new Promise((r) => setTimeout(r, 50));
      }
    }
    case "eval":
      return await get(cmd.page).page.evaluate(cmd.expr);
    case "canvas":
      return await get(cmd.page).page.evaluate(CANVAS);
    case "type": {
      const { page } = get(cmd.page);
      await page.evaluate("window.nexor.term.focus()");
      await page.keyboard.type(cmd.text, { delay: 5 });
      await page.keyboard.press("Enter");
      return null;
    }
    case "vnc_type": {
      // A real click (noVNC focuses its canvas and sends PointerEvents),
      // then real key presses (KeyEvents or QEMU extended key events).
      const { page } = get(cmd.page);
      await page.locator("#screen canvas").click({ position: { x: 200, y: 200 } });
      await page.keyboard.type(cmd.text, { delay: 5 });
      await page.keyboard.press("Enter");
      return null;
    }
    case "shot": {
      const { page } = get(cmd.page);
      fs.mkdirSync(path.dirname(cmd.path), { recursive: true });
      if (cmd.canvas) await page.locator("#screen canvas").screenshot({ path: cmd.path });
      else await page.screenshot({ path: cmd.path });
      return null;
    }
    case "reload":
      await get(cmd.page).page.reload({ waitUntil: "load", timeout: 20000 });
      return null;
    case "close":
      return closePage(cmd.page);
    case "dump": {
      fs.mkdirSync(cmd.dir, { recursive: true });
      for (const [name, p] of pages) {
        const base = path.join(cmd.dir, `${cmd.prefix}-${name}`);
        try { await p.page.screenshot({ path: base + ".png", timeout: 5000 }); } catch (e) { p.log.push(`[dump] screenshot: ${e}`); }
        let state = "";
        try {
          state = JSON.stringify(await p.page.evaluate("({ nexor: window.nexor && { kind: nexor.kind, events: nexor.events, desktopName: nexor.desktopName }, ws: window.__ws, status: document.getElementById('status')?.textContent })"));
        } catch (e) { state = String(e); }
        fs.writeFileSync(base + ".log", `url: ${p.page.url().split("#")[0]}\nstate: ${state}\n` + p.log.join("\n") + "\n");
      }
      return [...pages.keys()];
    }
    case "quit":
      await browser.close();
      out({ id: cmd.id, ok: true, value: null });
      process.exit(0);
    default:
      throw new Error(`unknown op ${cmd.op}`);
  }
}

out({ ready: true, version: browser.version() });
const rl = readline.createInterface({ input: process.stdin });
rl.on("line", async (line) => {
  let cmd;
  try { cmd = JSON.parse(line); } catch (e) { out({ id: null, ok: false, error: `bad json: ${e}` }); return; }
  try {
    const value = await run(cmd);
    out({ id: cmd.id, ok: true, value: value === undefined ? null : value });
  } catch (e) {
    out({ id: cmd.id, ok: false, error: String(e && e.message ? e.message : e).slice(0, 2000) });
  }
});
rl.on("close", async () => {
  try { await browser.close(); } catch (e) {}
  process.exit(0);
});
