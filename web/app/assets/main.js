// The app shell: a history-API router over the views, and one live event
// stream shared by every view.

import { followEvents, setToken, token } from './api.js';
import { h } from './ui.js';
import * as overview from './overview.js';
import * as policy from './policy.js';
import * as events from './events.js';
import * as xds from './xds.js';

const routes = [
  { match: /^\/$/, view: overview, nav: 'overview', title: () => 'Policies' },
  { match: /^\/policies\/([^/]+)\/?$/, view: policy, nav: 'overview', title: (name) => name },
  { match: /^\/events\/?$/, view: events, nav: 'events', title: () => 'Events' },
  { match: /^\/xds\/?$/, view: xds, nav: 'xds', title: () => 'xDS clients' },
];

const listeners = new Set();
/** Views subscribe to live events; returns the unsubscribe function. */
export function onEvent(fn) {
  listeners.add(fn);
  return () => listeners.delete(fn);
}

let current = null;

export function navigate(path, replace = false) {
  if (replace) history.replaceState(null, '', path);
  else history.pushState(null, '', path);
  render();
}

function render() {
  current?.unmount?.();
  current = null;
  const main = document.getElementById('view');
  const path = location.pathname;
  const route = routes.find((r) => r.match.test(path));
  for (const a of document.querySelectorAll('nav a')) {
    if (route && a.dataset.view === route.nav) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  main.replaceChildren();
  if (!route) {
    document.title = 'Not found — Meridian';
    main.textContent = `No page at ${path}.`;
    return;
  }
  const args = path.match(route.match).slice(1).map(decodeURIComponent);
  document.title = `${route.title(...args)} — Meridian`;
  // A screen reader or keyboard starts at the new content, not at the
  // link that led there (a view may move the focus further, e.g. search).
  main.focus({ preventScroll: true });
  current = route.view.mount(main, ...args) ?? null;
}

// In-app links navigate without a reload (and keep the event stream).
document.addEventListener('click', (e) => {
  const a = e.target.closest('a[data-nav]');
  if (!a || e.defaultPrevented || e.button !== 0 || e.metaKey || e.ctrlKey || e.shiftKey) return;
  e.preventDefault();
  navigate(a.getAttribute('href'));
});
window.addEventListener('popstate', render);

// Sign-in: shown when the API answers 401; the token stays in this tab.
const signin = document.getElementById('signin');
function showSignin(reason) {
  if (signin.open) return;
  const input = h('input', { type: 'password', id: 'token', autocomplete: 'off', required: true, placeholder: 'mrd_…' });
  signin.replaceChildren(
    h(
      'form',
      { method: 'dialog', onsubmit: (e) => { e.preventDefault(); setToken(input.value.trim()); signin.close(); updateAccount(); render(); } },
      h('h2', {}, 'Sign in to Meridian'),
      h('p', {}, reason ?? 'The API needs credentials.'),
      h('label', { for: 'token' }, 'API token or OIDC JWT', input),
      h('p', { class: 'hint' }, 'Kept for this browser tab only and sent as a bearer token to this server. Create one with `meridian token create`.'),
      h('div', { class: 'dialog-buttons' }, h('button', { type: 'button', class: 'btn', onclick: () => signin.close() }, 'Cancel'), h('button', { type: 'submit', class: 'btn primary' }, 'Sign in')),
    ),
  );
  signin.showModal();
  input.focus();
}
window.addEventListener('meridian-unauthenticated', (e) => showSignin(e.detail));

const account = document.getElementById('account');
function updateAccount() {
  account.replaceChildren(
    token()
      ? h('button', { type: 'button', class: 'btn small', onclick: () => { setToken(null); updateAccount(); render(); } }, 'Sign out')
      : h('button', { type: 'button', class: 'btn small', onclick: () => showSignin('Paste a token to act with its role.') }, 'Sign in'),
  );
}
updateAccount();

const live = document.getElementById('live');
followEvents(
  (event) => {
    for (const fn of listeners) fn(event);
  },
  (state) => {
    live.className = `live ${state === 'live' ? 'ok' : 'warn'}`;
    live.querySelector('.text').textContent = { live: 'live', 'signed-out': 'sign in for live updates' }[state] ?? 'reconnecting…';
  },
);

render();
