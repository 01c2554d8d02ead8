// The REST API, as the dashboard uses it. Every refusal becomes an
// ApiError carrying the server's own message and field details, which the
// UI shows as they are.

import { parseSse } from './logic.js';

// Credentials: when the API asks for them (401), the SRE pastes a token
// (`meridian token create`), kept for this tab only (sessionStorage: gone
// when the tab closes, never sent to another site) and sent as a bearer
// token on every API call, the event stream included. A server without
// authentication (the loopback demo) never asks.
const TOKEN_KEY = 'meridian.token';

export function token() {
  try {
    return sessionStorage.getItem(TOKEN_KEY);
  } catch {
    return null;
  }
}

export function setToken(value) {
  if (value) sessionStorage.setItem(TOKEN_KEY, value);
  else sessionStorage.removeItem(TOKEN_KEY);
  window.dispatchEvent(new Event('meridian-credentials'));
}

function withAuth(headers) {
  const t = token();
  return t ? { ...headers, authorization: `Bearer ${t}` } : headers;
}

/** Tells the shell that the API wants credentials (it shows the form). */
function needCredentials(err) {
  if (err.status === 401) window.dispatchEvent(new CustomEvent('meridian-unauthenticated', { detail: err.message }));
}

export class ApiError extends Error {
  constructor(status, body) {
    super(body?.message ?? `HTTP ${status}`);
    this.status = status;
    this.code = body?.error ?? 'error';
    this.details = Array.isArray(body?.details) ? body.details : [];
  }
}

async function answer(response) {
  const text = await response.text();
  let body = null;
  if (text) {
    try {
      body = JSON.parse(text);
    } catch {
      body = { message: text };
    }
  }
  if (!response.ok) {
    const err = new ApiError(response.status, body);
    needCredentials(err);
    throw err;
  }
  return { body, etag: response.headers.get('etag') };
}

export async function get(path) {
  let response;
  try {
    response = await fetch(path, { headers: withAuth({ accept: 'application/json' }), cache: 'no-store' });
  } catch (e) {
    throw new ApiError(0, { error: 'unreachable', message: `Meridian does not answer (${e.message})` });
  }
  return (await answer(response)).body;
}

/** A write: JSON body (or none), optional extra headers. */
export async function send(method, path, body, headers = {}) {
  const init = { method, headers: withAuth({ accept: 'application/json', ...headers }) };
  if (body !== undefined) {
    init.headers['content-type'] ??= 'application/json';
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (e) {
    throw new ApiError(0, { error: 'unreachable', message: `Meridian does not answer (${e.message})` });
  }
  return (await answer(response)).body;
}

export const enc = encodeURIComponent;

/**
 * Follows the server-sent event stream, whatever the event kinds (an
 * EventSource only delivers the kinds it was told to listen for, and new
 * kinds such as GitOps syncs arrive later), resuming after the last seen
 * id when the connection drops. Returns a function that stops it.
 */
export function followEvents(onEvent, onState) {
  let stopped = false;
  let lastId = null;
  let controller = null;
  let delay = 500;
  async function run() {
    while (!stopped) {
      controller = new AbortController();
      try {
        const headers = withAuth({ accept: 'text/event-stream' });
        if (lastId) headers['last-event-id'] = lastId;
        const response = await fetch('/api/v1/events/stream', { headers, signal: controller.signal, cache: 'no-store' });
        if (response.status === 401) {
          // Wait for credentials rather than hammering the server.
          onState('signed-out');
          needCredentials(new ApiError(401, await response.json().catch(() => null)));
          await new Promise((r) => window.addEventListener('meridian-credentials', r, { once: true }));
          continue;
        }
        if (!response.ok || !response.body) throw new Error(`HTTP ${response.status}`);
        onState('live');
        delay = 500;
        const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
        let buffer = '';
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          const parsed = parseSse(buffer + value);
          buffer = parsed.rest;
          for (const e of parsed.events) {
            if (e.id) lastId = e.id;
            try {
              onEvent(JSON.parse(e.data));
            } catch (err) {
              console.warn('unreadable event', e, err);
            }
          }
        }
      } catch (e) {
        if (stopped) return;
        console.warn('event stream', e);
      }
      if (stopped) return;
      onState('reconnecting');
      await new Promise((r) => setTimeout(r, delay));
      delay = Math.min(delay * 2, 5000);
    }
  }
  run();
  return () => {
    stopped = true;
    controller?.abort();
  };
}
