// Small DOM helpers: an element builder, the confirmation dialog that
// shows what will change and the server's answer, and notices.

/** `h('td', {class: 'x', onclick: f}, child, 'text', [more])`. Text is
 *  always set as text, never parsed as HTML. */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs ?? {})) {
    if (v == null || v === false) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.className = v;
    else if (k === 'style' && typeof v === 'object') Object.assign(el.style, v);
    else if (k === 'dataset') Object.assign(el.dataset, v);
    else if (v === true) el.setAttribute(k, '');
    else el.setAttribute(k, String(v));
  }
  append(el, children);
  return el;
}

/** Replaces the children of `el`; null, undefined and false are skipped
 *  (the DOM's own replaceChildren would print them). */
export function fill(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children) {
    if (c == null || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

export function svg(tag, attrs = {}, ...children) {
  const el = document.createElementNS('http://www.w3.org/2000/svg', tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  for (const c of children) if (c) el.append(c);
  return el;
}

/** A state badge: colour, icon and word. */
export function badge(state, extra = {}) {
  return h(
    'span',
    { class: `badge ${state.level}`, title: extra.title ?? state.label, ...extra.attrs },
    h('span', { class: 'icon', 'aria-hidden': 'true' }, state.icon),
    ' ',
    state.label,
  );
}

/** Shows the server's refusal: its message and each field detail. */
export function errorBox(err) {
  return h(
    'div',
    { class: 'error-box', role: 'alert' },
    h('strong', {}, err.status ? `Refused (${err.status} ${err.code}): ` : 'Failed: '),
    err.message,
    err.details?.length
      ? h('ul', {}, err.details.map((d) => h('li', {}, d.field ? h('code', {}, d.field) : null, d.field ? ': ' : '', d.message)))
      : null,
  );
}

/**
 * Asks before acting. `changes` is the preview: rows of
 * `{what, from, to}` (and/or a `body` node). `action` runs on confirm; if
 * the server refuses, the dialog stays open with its message, so the SRE
 * sees why and can correct or cancel. Resolves true when applied.
 */
export function confirmAction({ title, intro, changes = [], body = null, confirmLabel = 'Apply', danger = false, action }) {
  return new Promise((resolve) => {
    const dialog = document.getElementById('confirm');
    const status = h('div', { class: 'dialog-status', 'aria-live': 'polite' });
    const cancel = h('button', { type: 'button', class: 'btn', value: 'cancel' }, 'Cancel');
    const ok = h('button', { type: 'submit', class: `btn ${danger ? 'danger' : 'primary'}`, 'data-testid': 'confirm-apply' }, confirmLabel);
    const form = h(
      'form',
      { method: 'dialog' },
      h('h2', { id: 'confirm-title' }, title),
      intro ? h('p', {}, intro) : null,
      changes.length
        ? h(
            'table',
            { class: 'changes' },
            h('thead', {}, h('tr', {}, h('th', {}, 'What'), h('th', {}, 'Now'), h('th', {}, ''), h('th', {}, 'After'))),
            h(
              'tbody',
              {},
              changes.map((c) =>
                h('tr', {}, h('td', {}, c.what), h('td', { class: 'from' }, String(c.from)), h('td', { 'aria-hidden': 'true' }, '→'), h('td', { class: 'to' }, String(c.to))),
              ),
            ),
          )
        : null,
      body,
      status,
      h('div', { class: 'dialog-buttons' }, cancel, ok),
    );
    dialog.replaceChildren(form);
    dialog.setAttribute('aria-labelledby', 'confirm-title');
    let done = false;
    let busy = false;
    const finish = (applied) => {
      if (done) return;
      done = true;
      dialog.close();
      resolve(applied);
    };
    cancel.addEventListener('click', () => finish(false));
    // Escape cancels, except while the request is in flight: closing then
    // would hide whether it was applied.
    dialog.oncancel = (e) => {
      e.preventDefault();
      if (!busy) finish(false);
    };
    form.addEventListener('submit', async (e) => {
      e.preventDefault();
      if (busy) return;
      busy = true;
      ok.disabled = true;
      cancel.disabled = true;
      status.replaceChildren(h('span', { class: 'muted' }, 'Applying…'));
      try {
        await action();
        finish(true);
        toast(`${title}: applied`, 'ok');
      } catch (err) {
        busy = false;
        status.replaceChildren(errorBox(err));
        ok.disabled = false;
        cancel.disabled = false;
        cancel.focus();
      }
    });
    dialog.showModal();
    ok.focus();
  });
}

export function toast(message, level = 'info') {
  const region = document.getElementById('toasts');
  const el = h('div', { class: `toast ${level}`, role: 'status' }, message);
  region.append(el);
  setTimeout(() => el.remove(), 6000);
}

/** Formats a weight as a percentage label. */
export const pct = (n) => `${Math.round(n * 10) / 10}%`;

/** Runs `draw` (which replaces part of `root`) and puts the focus back on
 *  the element with the same `data-key`, so periodic redraws never throw a
 *  keyboard user out of the page. */
export function keepFocus(root, draw) {
  const key = root.contains(document.activeElement) ? document.activeElement?.dataset?.key : undefined;
  draw();
  if (key) root.querySelector(`[data-key="${CSS.escape(key)}"]`)?.focus();
}
