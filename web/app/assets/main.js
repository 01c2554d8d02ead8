// The app shell: a history-API router over the views, and one live event
// stream shared by every view.

import { followEvents } from './api.js';
import * as overview from './overview.js';
import * as policy from './policy.js';
import * as events from './events.js';
import * as xds from './xds.js';

const routes = [
  { match: /^\/$/, view: overview, nav: 'overview' },
  { match: /^\/policies\/([^/]+)\/?$/, view: policy, nav: 'overview' },
  { match: /^\/events\/?$/, view: events, nav: 'events' },
  { match: /^\/xds\/?$/, view: xds, nav: 'xds' },
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
    main.textContent = `No page at ${path}.`;
    return;
  }
  const args = path.match(route.match).slice(1).map(decodeURIComponent);
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

const live = document.getElementById('live');
followEvents(
  (event) => {
    for (const fn of listeners) fn(event);
  },
  (state) => {
    live.className = `live ${state === 'live' ? 'ok' : 'warn'}`;
    live.querySelector('.text').textContent = state === 'live' ? 'live' : 'reconnecting…';
  },
);

render();
