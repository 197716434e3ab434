// The real-browser test of the viewer page: headless Chromium (driven over
// the DevTools protocol by playwright-core) opens `GET /` of a real
// baton-origin (or baton-edge), plays a stream with mpegts.js, and we
// check what a viewer sees: frames presented, currentTime advancing, no
// player error, and the picture moving on after a publisher reconnects
// from timestamp 0 or the origin under an edge is SIGKILLed.
//
// Run it through tests/browser/run.sh (it installs mpegts.js and
// playwright-core from npm into a temp dir and builds the binaries).
// Environment: BATON_ORIGIN_BIN, BATON_EDGE_BIN, CHROMIUM, MPEGTS_JS (the
// file to serve), OUT_DIR (logs, screenshots, summary.json), SCENARIOS
// (comma list of: republish, edge; default both), NODE_ARGS (extra flags
// for every node).
'use strict';

const { chromium } = require('playwright-core');
const { spawn } = require('child_process');
const fs = require('fs');
const http = require('http');
const net = require('net');
const path = require('path');

const ORIGIN_BIN = need('BATON_ORIGIN_BIN');
const EDGE_BIN = process.env.BATON_EDGE_BIN || '';
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const MPEGTS_JS = need('MPEGTS_JS');
const OUT_DIR = need('OUT_DIR');
const SCENARIOS = (process.env.SCENARIOS || 'republish,edge').split(',').map((s) => s.trim());
const STREAM = 'live/demo';
// Extra flags for every origin and edge (to see the test fail, e.g.
// NODE_ARGS='--republish end').
const NODE_ARGS = (process.env.NODE_ARGS || '').split(' ').filter(Boolean);

function need(name) {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set (run tests/browser/run.sh)`);
  return v;
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const children = new Set();
const failures = [];
const summary = [];

function check(scenario, ok, what) {
  if (!ok) failures.push(`${scenario}: ${what}`);
  return ok;
}

async function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.on('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const port = s.address().port;
      s.close(() => resolve(port));
    });
  });
}

// The servers' environment without the caller's BATON_* settings.
const CLEAN_ENV = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('BATON_')));

function run(name, bin, args) {
  const log = fs.openSync(path.join(OUT_DIR, `${name}.log`), 'a');
  const child = spawn(bin, args, { stdio: ['ignore', log, log], env: CLEAN_ENV });
  child.label = name;
  children.add(child);
  child.on('exit', () => children.delete(child));
  return child;
}

async function kill(child, signal) {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((r) => child.once('exit', r));
  child.kill(signal);
  await Promise.race([exited, sleep(5000)]);
}

async function get(url) {
  return new Promise((resolve, reject) => {
    const req = http.get(url, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d) => (body += d));
      res.on('end', () => resolve({ status: res.statusCode, body }));
    });
    req.on('error', reject);
    req.setTimeout(3000, () => req.destroy(new Error(`timeout: ${url}`)));
  });
}

async function until(what, limitMs, probe) {
  const deadline = Date.now() + limitMs;
  for (;;) {
    try {
      const v = await probe();
      if (v) return v;
    } catch (_) {
      // not yet
    }
    if (Date.now() > deadline) throw new Error(`timed out after ${limitMs} ms waiting for ${what}`);
    await sleep(100);
  }
}

// A baton-origin or baton-edge on fresh loopback ports, healthy.
async function startNode(name, bin, extra, playerJsUrl) {
  const ports = { rtmp: await freePort(), http: await freePort(), api: await freePort() };
  const dir = fs.mkdtempSync(path.join(OUT_DIR, `${name}-`));
  const args = [
    '--rtmp', `127.0.0.1:${ports.rtmp}`,
    '--http', `127.0.0.1:${ports.http}`,
    '--api', `127.0.0.1:${ports.api}`,
    '--pid-file', path.join(dir, `${name}.pid`),
    '--control-dir', dir,
    '--player-js-url', playerJsUrl,
    ...NODE_ARGS,
    ...extra,
  ];
  const child = run(name, bin, args);
  await until(`${name} /healthz`, 10000, async () => {
    if (child.exitCode !== null) throw new Error(`${name} exited with ${child.exitCode}; see ${name}.log`);
    return (await get(`http://127.0.0.1:${ports.api}/healthz`)).status === 200;
  });
  return { name, child, ports, rtmp: `127.0.0.1:${ports.rtmp}`, api: `127.0.0.1:${ports.api}`,
    page: `http://127.0.0.1:${ports.http}/` };
}

let publishers = 0;
function publish(node) {
  publishers += 1;
  return run(`ffmpeg-${publishers}`, 'ffmpeg', [
    '-hide_banner', '-loglevel', 'warning', '-nostdin', '-re',
    '-f', 'lavfi', '-i', 'testsrc2=size=640x360:rate=30',
    '-f', 'lavfi', '-i', 'sine=frequency=1000',
    '-c:v', 'libx264', '-preset', 'veryfast', '-tune', 'zerolatency', '-g', '30',
    '-c:a', 'aac', '-f', 'flv', `rtmp://${node.rtmp}/${STREAM}`,
  ]);
}

async function listed(node) {
  return until(`${STREAM} on ${node.page}`, 15000, async () => {
    const res = await get(node.page);
    return res.status === 200 && res.body.includes(`data-stream="${STREAM}"`);
  });
}

// The page's own sampler: every 50 ms what the viewer sees.
const SAMPLER = () => {
  const entry = window.baton.players['live/demo'];
  const samples = [];
  window.batonSamples = samples;
  setInterval(() => {
    const v = entry.video;
    const q = v.getVideoPlaybackQuality();
    const b = v.buffered;
    samples.push({
      t: Date.now(),
      ct: v.currentTime,
      frames: q.totalVideoFrames,
      dropped: q.droppedVideoFrames,
      bufEnd: b.length ? b.end(b.length - 1) : 0,
      errors: entry.errors.length + (v.error ? 1 : 0),
    });
  }, 50);
};

async function openViewer(browser, node, label) {
  const page = await browser.newPage();
  page.label = label;
  page.pageErrors = [];
  page.on('pageerror', (e) => page.pageErrors.push(String(e)));
  page.on('console', (m) => {
    if (m.type() === 'error') page.pageErrors.push(`console: ${m.text()}`);
  });
  await page.goto(node.page);
  const streams = await page.evaluate(() => window.baton.streams);
  if (!streams.includes(STREAM)) throw new Error(`${label}: the page lists ${JSON.stringify(streams)}`);
  // Click the stream's button, as a viewer would.
  await page.click(`button[data-stream="${STREAM}"]`);
  page.playedAt = Date.now();
  await page.evaluate(SAMPLER);
  return page;
}

async function samplesOf(page) {
  return page.evaluate(() => window.batonSamples);
}

async function playerState(page) {
  return page.evaluate(() => {
    const e = window.baton.players['live/demo'];
    return { errors: e.errors, warnings: e.warnings, videoError: e.video.error ? e.video.error.message || String(e.video.error.code) : null };
  });
}

const at = (samples, t) => samples.filter((s) => s.t <= t).pop() || samples[0];
const after = (samples, t) => samples.find((s) => s.t >= t);
const round = (x, n = 2) => Math.round(x * 10 ** n) / 10 ** n;

// Longest time the picture did not move (no new frame presented).
function longestFreeze(samples, from, to) {
  let longest = 0;
  let since = null;
  let last = null;
  for (const s of samples) {
    if (s.t < from || s.t > to) continue;
    if (last === null || s.frames > last) {
      since = s.t;
      last = s.frames;
    } else {
      longest = Math.max(longest, s.t - since);
    }
  }
  return longest;
}

function steady(scenario, samples, from, ms, minFrames, minAdvance) {
  const a = after(samples, from);
  const b = at(samples, from + ms);
  const frames = b.frames - a.frames;
  const advance = b.ct - a.ct;
  check(scenario, b.t - a.t >= ms - 200, `only ${b.t - a.t} ms sampled`);
  check(scenario, frames >= minFrames, `${frames} frames presented in ${ms / 1000} s (want >= ${minFrames})`);
  check(scenario, advance >= minAdvance, `currentTime advanced ${round(advance)} s in ${ms / 1000} s (want >= ${minAdvance})`);
  return { frames, advance: round(advance), longestFreezeMs: longestFreeze(samples, from, from + ms) };
}

async function errorsOf(scenario, page) {
  const state = await playerState(page);
  const all = [...state.errors.map((e) => `${e.type} ${e.detail} ${e.info || ''}`)];
  if (state.videoError) all.push(`video.error ${state.videoError}`);
  all.push(...page.pageErrors);
  check(scenario, all.length === 0, `player errors: ${JSON.stringify(all)}`);
  return all;
}

function report(line) {
  summary.push(line);
  console.log(`BROWSER ${line.scenario}: frames presented ${line.frames}, currentTime advance ${line.advance} s` +
    (line.resumeMs !== undefined ? `, picture moved on ${line.resumeMs} ms after the new keyframe arrived` +
      ` (${line.newDataAfterPublishMs} ms after the new ffmpeg started)` : '') +
    (line.longestFreezeMs !== undefined ? `, longest freeze ${line.longestFreezeMs} ms` : '') +
    `, errors ${line.errors.length}${line.errors.length ? ' ' + JSON.stringify(line.errors) : ''}` +
    (line.screenshot ? `, screenshot ${line.screenshot}` : ''));
}

// After a gap in the stream (publisher gone, from `gapAt`; a new one
// started at `newAt`): when the first new data reached the buffer, when
// the picture moved on, then 18 s of playing.
async function afterReconnect(scenario, page, gapAt, newAt) {
  await sleep(Math.max(0, newAt + 21000 - Date.now()));
  let samples = await samplesOf(page);
  const stalled = samples.filter((s) => s.t >= gapAt + 1500 && s.t <= newAt);
  const bufBefore = Math.max(...stalled.map((s) => s.bufEnd), 0);
  const arrived = samples.find((s) => s.t > newAt && s.bufEnd > bufBefore + 0.001);
  if (!check(scenario, arrived, 'no new media reached the player after the new publisher started')) {
    return report({ scenario, frames: 0, advance: 0, errors: await errorsOf(scenario, page) });
  }
  const moved = samples.find((s) => s.t >= arrived.t && s.frames > arrived.frames && s.ct > arrived.ct + 0.02);
  if (!check(scenario, moved, 'the picture never moved on after the new keyframe')) {
    return report({ scenario, frames: 0, advance: 0, errors: await errorsOf(scenario, page) });
  }
  const resumeMs = moved.t - arrived.t;
  check(scenario, resumeMs <= 1000, `the picture moved on ${resumeMs} ms after the new keyframe arrived (want <= 1000)`);
  await sleep(Math.max(0, moved.t + 18300 - Date.now()));
  samples = await samplesOf(page);
  const s = steady(scenario, samples, moved.t, 18000, 240, 14);
  return { ...s, resumeMs, arrivedAfterPublishMs: arrived.t - newAt, samples };
}

async function scenarioRepublish(browser, playerJsUrl) {
  const origin = await startNode('origin', ORIGIN_BIN, [], playerJsUrl);
  let ffmpeg = publish(origin);
  await listed(origin);
  const early = await openViewer(browser, origin, 'early joiner');
  await sleep(3000);
  const late = await openViewer(browser, origin, 'late joiner');
  await sleep(Math.max(0, early.playedAt + 8500 - Date.now()));

  // (a) plain playback: the early joiner's first 8 s.
  let samples = await samplesOf(early);
  const a = steady('a plain', samples, early.playedAt, 8000, 150, 6);
  const shot1 = path.join(OUT_DIR, 'viewer-playing.png');
  await early.screenshot({ path: shot1 });
  report({ scenario: 'a plain playback (origin, 8 s)', ...a, errors: await errorsOf('a plain', early), screenshot: shot1 });

  // (b) the publisher goes away for 4 s; a new one starts from 0.
  await kill(ffmpeg, 'SIGKILL');
  const gapAt = Date.now();
  await sleep(4000);
  ffmpeg = publish(origin);
  const newAt = Date.now();
  const [e, l] = await Promise.all([
    afterReconnect('b early joiner', early, gapAt, newAt),
    afterReconnect('b late joiner', late, gapAt, newAt),
  ]);
  const shot2 = path.join(OUT_DIR, 'viewer-after-republish.png');
  await early.screenshot({ path: shot2 });
  for (const [name, page, r] of [['b republish, early joiner', early, e], ['b republish, late joiner', late, l]]) {
    if (!r) continue;
    report({ scenario: name, frames: r.frames, advance: r.advance, resumeMs: r.resumeMs,
      longestFreezeMs: r.longestFreezeMs, newDataAfterPublishMs: r.arrivedAfterPublishMs,
      errors: await errorsOf(name, page), screenshot: page === early ? shot2 : undefined });
    fs.writeFileSync(path.join(OUT_DIR, `samples-${name.replace(/[^a-z]+/g, '-')}.json`), JSON.stringify(r.samples));
  }
  await early.close();
  await late.close();
  await kill(ffmpeg, 'SIGKILL');
  await kill(origin.child, 'SIGTERM');
}

async function scenarioEdge(browser, playerJsUrl) {
  if (!EDGE_BIN) throw new Error('BATON_EDGE_BIN is not set');
  const origins = [
    await startNode('edge-origin-1', ORIGIN_BIN, [], playerJsUrl),
    await startNode('edge-origin-2', ORIGIN_BIN, [], playerJsUrl),
  ];
  const originFlags = origins.flatMap((o) => ['--origin', `${o.rtmp},api=${o.api}`]);
  // The publisher's edge, and another edge whose players pull from the
  // origin holding the stream (so the SIGKILL reaches them).
  const edge = await startNode('edge-1', EDGE_BIN, originFlags, playerJsUrl);
  const other = await startNode('edge-2', EDGE_BIN, originFlags, playerJsUrl);
  const ffmpeg = publish(edge);
  await listed(edge);
  // Which origin the edge forwards the publish to.
  const holderRtmp = await until('the edge forwarding the publish', 15000, async () => {
    const res = await get(`http://${edge.api}/api/v1/upstreams`);
    const ups = JSON.parse(res.body).data.upstreams || [];
    const up = ups.find((u) => u.stream === STREAM && u.origin);
    return up && up.origin;
  });
  const holder = origins.find((o) => o.rtmp === holderRtmp);
  if (!holder) throw new Error(`the edge forwards to ${holderRtmp}, not one of ours`);
  // edge-2 lists the stream once a player pulls it: start one pull with
  // a short HEAD-less GET of the FLV URL that we abort at once.
  await until(`${STREAM} through edge-2`, 15000, () => new Promise((resolve) => {
    const req = http.get(`${other.page}${STREAM}.flv`, (res) => {
      resolve(res.statusCode === 200);
      req.destroy();
    });
    req.on('error', () => resolve(false));
  }).then((ok) => ok && listed(other)));
  const viewers = [
    [await openViewer(browser, edge, 'viewer on the publisher\'s edge'), 'on the publisher\'s edge'],
    [await openViewer(browser, other, 'viewer on another edge'), 'on another edge'],
  ];
  await sleep(Math.max(0, viewers[1][0].playedAt + 6000 - Date.now()));
  await kill(holder.child, 'SIGKILL');
  const killedAt = Date.now();
  await sleep(18500);
  const upstreams = async (node) => get(`http://${node.api}/api/v1/upstreams`).then((res) => JSON.parse(res.body).data.upstreams
    .filter((u) => u.stream === STREAM).map((u) => `${node.name} ${u.direction} to ${u.origin} (moves ${u.moves})`))
    .catch((err) => [String(err)]);
  const moved = [...(await upstreams(edge)), ...(await upstreams(other))];
  for (const [viewer, where] of viewers) {
    const name = `c edge, SIGKILL of the origin holding the stream, viewer ${where}`;
    const samples = await samplesOf(viewer);
    const r = steady(name, samples, killedAt, 18000, 240, 14);
    const shot = path.join(OUT_DIR, `viewer-edge-${where.replace(/[^a-z]+/g, '-')}.png`);
    await viewer.screenshot({ path: shot });
    report({ scenario: name, frames: r.frames, advance: r.advance, longestFreezeMs: r.longestFreezeMs,
      errors: await errorsOf(name, viewer), screenshot: shot });
    fs.writeFileSync(path.join(OUT_DIR, `samples-c-edge-${where.replace(/[^a-z]+/g, '-')}.json`), JSON.stringify(samples));
    await viewer.close();
  }
  console.log(`BROWSER c edge: killed origin ${holderRtmp}; now ${moved.join(', ')}`);
  await kill(ffmpeg, 'SIGKILL');
  for (const node of [edge, other, ...origins]) await kill(node.child, 'SIGTERM');
}

async function main() {
  fs.mkdirSync(OUT_DIR, { recursive: true });
  const js = fs.readFileSync(MPEGTS_JS);
  const jsServer = http.createServer((req, res) => {
    if (req.url.split('?')[0] !== '/mpegts.js') {
      res.writeHead(404).end();
      return;
    }
    res.writeHead(200, { 'content-type': 'application/javascript', 'cache-control': 'no-cache' });
    res.end(js);
  });
  await new Promise((r) => jsServer.listen(0, '127.0.0.1', r));
  const playerJsUrl = `http://127.0.0.1:${jsServer.address().port}/mpegts.js`;

  const profile = fs.mkdtempSync(path.join(OUT_DIR, 'chromium-profile-'));
  const browser = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: [
      '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
      '--autoplay-policy=no-user-gesture-required',
    ],
    viewport: { width: 900, height: 560 },
  });
  try {
    if (SCENARIOS.includes('republish')) await scenarioRepublish(browser, playerJsUrl);
    if (SCENARIOS.includes('edge')) await scenarioEdge(browser, playerJsUrl);
  } finally {
    await browser.close().catch(() => {});
    jsServer.close();
    for (const child of [...children]) await kill(child, 'SIGKILL');
  }
  fs.writeFileSync(path.join(OUT_DIR, 'summary.json'), JSON.stringify({ summary, failures }, null, 2));
  if (failures.length) {
    console.log(`BROWSER FAILED (${failures.length}):\n  ${failures.join('\n  ')}`);
    console.log(`logs: ${OUT_DIR}`);
    process.exitCode = 1;
  } else {
    console.log(`BROWSER OK: every scenario passed; output in ${OUT_DIR}`);
  }
}

main().catch(async (e) => {
  console.error(`BROWSER ERROR: ${e.stack || e}`);
  for (const child of [...children]) await kill(child, 'SIGKILL');
  process.exit(1);
});
