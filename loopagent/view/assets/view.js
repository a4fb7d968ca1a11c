// loopagent trajectory viewer. Draws the JSON embedded in #data; needs no network.
// Texts from models are only ever inserted with textContent (never innerHTML).
(function () {
  'use strict';
  var DATA = JSON.parse(document.getElementById('data').textContent);
  var app = document.getElementById('app');
  var params = readParams();
  var FOLD = 600;                                  // characters of a text shown before "show all"
  var PAGE = parseInt(params.get('page') || '200', 10) || 200;  // children built per "show more"
  var DEFAULT_OPEN = { run: true, turn: true, exec: true, pending: true, calls: false, call: false, tool: false };

  var state = {
    expandAll: params.get('expand') === 'all',
    expanded: new Set(), collapsed: new Set(), fullText: new Set(), shown: new Map(),
    query: (params.get('q') || '').toLowerCase(), hits: null, visible: null, forced: null,
  };
  var index = { byId: new Map(), parent: new Map(), text: new Map() };

  function readParams() {
    var p = new URLSearchParams(location.search);
    new URLSearchParams(location.hash.replace(/^#/, '')).forEach(function (v, k) { p.set(k, v); });
    return p;
  }

  // -- small DOM helpers ------------------------------------------------------------------------
  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }
  function add(parent) {
    for (var i = 1; i < arguments.length; i++) if (arguments[i]) parent.appendChild(arguments[i]);
    return parent;
  }
  function num(n) { return n === null || n === undefined ? '-' : Number(n).toLocaleString('en-US'); }
  function secs(s) {
    if (s === null || s === undefined) return '-';
    return s < 1 ? (s * 1000).toFixed(s < 0.01 ? 2 : 1) + ' ms' : s.toFixed(2) + ' s';
  }
  function usd(u) { return u === null || u === undefined ? '-' : '$' + Number(u).toFixed(4); }
  function short(text, n) {
    if (text === null || text === undefined) return '';
    var flat = String(text).replace(/\s+/g, ' ').trim();
    return flat.length <= n ? flat : flat.slice(0, n - 1) + '…';
  }
  function badge(text, cls) { return el('span', 'badge ' + (cls || ''), text); }
  function codeText(tokens) { return (tokens || []).map(function (t) { return t[1]; }).join(''); }

  // -- the node index (ids, parents, search text) ----------------------------------------------
  function indexTree(roots) {
    index = { byId: new Map(), parent: new Map(), text: new Map() };
    var stack = roots.map(function (r) { return [r, null]; });
    while (stack.length) {
      var item = stack.pop(), node = item[0];
      index.byId.set(node.id, node);
      index.parent.set(node.id, item[1]);
      (node.kids || []).forEach(function (k) { stack.push([k, node.id]); });
    }
  }
  function searchText(node) {
    var t = index.text.get(node.id);
    if (t !== undefined) return t;
    var parts = [node.k, node.model, node.kind, node.query, node.prompt, node.completion, node.stdout,
      node.error, node.error_type, node.response, node.reason, node.detail, node.answer, node.run_id,
      node.name, node.arguments, node.result];
    if (node.code) parts.push(codeText(node.code));
    t = parts.filter(function (x) { return x !== null && x !== undefined; }).join('\n').toLowerCase();
    index.text.set(node.id, t);
    return t;
  }
  function runSearch() {
    state.hits = state.visible = state.forced = null;
    if (!state.query) return;
    state.hits = new Set(); state.visible = new Set(); state.forced = new Set();
    index.byId.forEach(function (node, id) {
      if (node.k === 'calls' || searchText(node).indexOf(state.query) < 0) return;
      state.hits.add(id); state.visible.add(id);
      for (var p = index.parent.get(id); p; p = index.parent.get(p)) {
        if (state.visible.has(p) && state.forced.has(p)) break;
        state.visible.add(p); state.forced.add(p);
      }
    });
  }
  function isOpen(node) {
    if (state.forced && state.forced.has(node.id)) return true;
    if (state.expanded.has(node.id)) return true;
    if (state.collapsed.has(node.id)) return false;
    return state.expandAll || !!DEFAULT_OPEN[node.k];
  }
  function expandable(node) { return ['limit', 'final', 'end'].indexOf(node.k) < 0; }

  // -- text blocks -------------------------------------------------------------------------------
  function textBlock(label, text, key, cls) {
    if (text === null || text === undefined || text === '') return null;
    var box = el('div', 'text ' + (cls || ''));
    if (label) add(box, el('div', 'label', label));
    var pre = el('pre');
    var full = state.fullText.has(key) || text.length <= FOLD;
    pre.textContent = full ? text : text.slice(0, FOLD);
    add(box, pre);
    if (!full) {
      var more = el('button', 'more', 'show all (' + num(text.length) + ' characters)');
      more.addEventListener('click', function () { state.fullText.add(key); box.replaceWith(textBlock(label, text, key, cls)); });
      add(pre, el('span', 'fold', '…'));
      add(box, more);
    }
    return box;
  }
  function codeBlock(tokens, key) {
    var box = el('div', 'text code');
    add(box, el('div', 'label', 'code'));
    var pre = el('pre'), left = state.fullText.has(key) ? Infinity : FOLD * 4, total = 0;
    for (var i = 0; i < tokens.length && left > 0; i++) {
      var text = tokens[i][1].slice(0, left);
      left -= text.length;
      add(pre, tokens[i][0] ? el('span', 'h-' + tokens[i][0], text) : document.createTextNode(text));
    }
    tokens.forEach(function (t) { total += t[1].length; });
    add(box, pre);
    if (left <= 0 && total > FOLD * 4) {
      var more = el('button', 'more', 'show all (' + num(total) + ' characters)');
      more.addEventListener('click', function () { state.fullText.add(key); box.replaceWith(codeBlock(tokens, key)); });
      add(box, more);
    }
    return box;
  }

  // -- labels of a node's head line ---------------------------------------------------------------
  function loops(chosen, executed, requested) {
    if (chosen === null || chosen === undefined) {
      return requested !== null && requested !== undefined ? badge('asked ' + requested + ' loops', 'loops') : null;
    }
    var t = (requested !== null && requested !== undefined ? 'asked ' + requested + ' · ' : '') + 'loops ' + chosen;
    if (executed !== null && executed !== undefined && executed !== chosen) t += ' → ran ' + (+executed).toFixed(2).replace(/\.?0+$/, '');
    return badge(t, 'loops');
  }
  function tokensBadge(u) {
    if (!u || (!u.prompt_tokens && !u.completion_tokens)) return null;
    var t = num(u.prompt_tokens || 0) + '+' + num(u.completion_tokens || 0) + ' tok';
    if (u.loop_tokens) t += ' · ' + num(u.loop_tokens) + ' loop-tok';
    if (u.usd) t += ' · ' + usd(u.usd);
    if (u.wall_s) t += ' · ' + secs(u.wall_s);
    return el('span', 'dim', t);
  }
  function runConfig(node) {
    var parts = [];
    ['root', 'child', 'policy'].forEach(function (k) { if (node[k] != null) parts.push(k + '=' + node[k]); });
    if (node.context) {
      parts.push('context=' + node.context.type + (node.context.chars != null ? ' ' + num(node.context.chars) + ' chars' : ''));
    }
    return parts.join(' ');
  }
  function head(node) {
    var h = el('span', 'title');
    switch (node.k) {
      case 'run':
        add(h, el('b', 'run-name', node.depth ? 'child run ' + node.run_id : 'run ' + node.run_id),
          badge('depth ' + node.depth), badge(node.status, node.status === 'final' ? 'ok' : node.status === 'running' ? 'live' : 'warn'),
          el('span', 'dim', runConfig(node)),
          el('span', 'preview', node.query ? 'Q: ' + short(node.query, 120) : ''));
        break;
      case 'turn':
        add(h, el('b', null, 'turn ' + node.n), el('span', 'model', node.model), loops(node.lc, node.le),
          tokensBadge(node.usage), el('span', 'preview', short(node.completion, 110)));
        break;
      case 'exec':
        add(h, el('b', null, 'REPL'), node.error ? badge('✗ ' + (node.error_type || 'error'), 'err') : badge('✓', 'ok'),
          el('span', 'dim', secs(node.duration_s) + (node.host_calls ? ' · ' + node.host_calls + ' host calls' : '')),
          node.restarted ? badge('worker restarted', 'warn') : null,
          el('span', 'preview mono', short(codeText(node.code), 110)));
        break;
      case 'pending':
        add(h, el('b', null, 'calls of a cell that has not ended'), badge('running', 'live'));
        break;
      case 'calls':
        var kinds = Object.keys(node.kinds).map(function (k) { return k + ' ×' + num(node.kinds[k]); }).join(', ');
        add(h, el('b', null, num(node.count) + ' sub-call' + (node.count === 1 ? '' : 's')), el('span', 'kind', kinds),
          tokensBadge(node.usage));
        break;
      case 'call':
        add(h, el('span', 'kind', node.kind + '#' + node.index), el('span', 'model', '→ ' + node.model),
          loops(node.lc, node.le, node.lr), node.error ? badge('error', 'err') : null, tokensBadge(node.usage),
          el('span', 'preview', short(node.prompt, 70) + (node.response ? '  ⇒  ' + short(node.response, 50) : '')));
        break;
      case 'tool':
        add(h, el('span', 'kind', 'tool'), el('b', null, node.name), node.error ? badge('✗ ' + (node.error_type || 'error'), 'err') : null,
          el('span', 'dim', secs(node.duration_s)),
          el('span', 'preview mono', short(node.name + '(' + node.arguments + ')', 70) +
            (node.result !== null && node.result !== undefined ? '  ⇒  ' + short(node.result, 50) : '')));
        break;
      case 'limit':
        add(h, badge('limit: ' + node.reason, 'err'), el('span', null, node.detail));
        break;
      case 'final':
        add(h, badge('answer (' + node.source + ')', 'ok'));
        break;
      case 'end':
        var u = node.usage || {};
        add(h, el('span', 'dim', 'end: ' + node.reason + ', ' + node.iterations + ' turns, ' + secs(node.wall_s) + ', ' +
          num(u.calls || 0) + ' calls, ' + num((u.prompt_tokens || 0) + (u.completion_tokens || 0)) + ' tokens, ' +
          num(u.loop_tokens || 0) + ' loop-tokens' + (u.usd ? ', ' + usd(u.usd) : '')));
        break;
    }
    return h;
  }

  function histogram(hist) {
    var keys = Object.keys(hist).map(Number).sort(function (a, b) { return a - b; });
    var max = Math.max.apply(null, keys.map(function (k) { return hist[k]; }).concat([1]));
    var total = keys.reduce(function (s, k) { return s + hist[k]; }, 0);
    var box = el('div', 'hist');
    add(box, el('div', 'label', 'exit depth per token (' + num(total) + ' tokens)'));
    var bars = el('div', 'hist-bars');
    keys.forEach(function (k) {
      var col = el('div', 'hist-col');
      col.title = 'exit at loop ' + k + ': ' + hist[k] + ' tokens';
      var bar = el('div', 'hist-bar');
      bar.style.height = Math.max(2, Math.round(48 * hist[k] / max)) + 'px';
      add(col, el('div', 'hist-n', hist[k]), bar, el('div', 'hist-k', k));
      add(bars, col);
    });
    return add(box, bars);
  }

  function body(node) {
    var b = el('div', 'body');
    switch (node.k) {
      case 'run':
        add(b, textBlock('query', node.query, node.id + ':q'),
          node.max_depth != null ? el('div', 'dim', 'max depth ' + node.max_depth) : null,
          node.system_prompt ? details('system prompt', node.system_prompt, node.id + ':sys') : null);
        break;
      case 'turn':
        add(b, textBlock('prompt (newest message)', node.prompt, node.id + ':p'),
          textBlock('completion', node.completion, node.id + ':c', 'completion'));
        break;
      case 'exec':
        add(b, codeBlock(node.code || [], node.id + ':code'), textBlock('output', node.stdout, node.id + ':out'),
          textBlock('error', node.error, node.id + ':err', 'error'));
        break;
      case 'call':
        add(b, textBlock('prompt', node.prompt, node.id + ':p'),
          textBlock('response', node.response, node.id + ':r', 'completion'),
          textBlock('error', node.error, node.id + ':e', 'error'),
          el('div', 'dim', 'loops: requested ' + dash(node.lr) + ' · chosen ' + dash(node.lc) + ' · executed ' + dash(node.le)),
          node.hist ? histogram(node.hist) : null);
        break;
      case 'tool':
        add(b, textBlock('arguments', node.arguments, node.id + ':a'),
          textBlock('result', node.result, node.id + ':r', 'completion'),
          textBlock('error', node.error, node.id + ':e', 'error'));
        break;
      case 'final':
        add(b, textBlock(null, node.answer, node.id + ':a', 'completion'));
        break;
    }
    return b;
  }
  function dash(v) { return v === null || v === undefined ? '-' : String(v); }
  function details(label, text, key) {
    var d = el('details', 'sys');
    add(d, el('summary', null, label + ' (' + num(text.length) + ' characters)'));
    d.addEventListener('toggle', function () { if (d.open && d.children.length < 2) add(d, textBlock(null, text, key)); }, { once: true });
    return d;
  }

  // -- nodes -------------------------------------------------------------------------------------
  function renderNode(node) {
    var open = isOpen(node);
    var wrap = el('div', 'node k-' + node.k + (state.hits && state.hits.has(node.id) ? ' hit' : ''));
    wrap.id = 'n-' + node.id;
    wrap.setAttribute('data-id', node.id);
    var line = el('div', 'head');
    if (expandable(node)) {
      var tog = el('button', 'toggle', open ? '▾' : '▸');
      tog.setAttribute('aria-expanded', open ? 'true' : 'false');
      line.addEventListener('click', function (ev) {
        if (ev.target.closest('button.more')) return;
        toggle(node, !isOpen(node));
        wrap.replaceWith(renderNode(node));
      });
      add(line, tog);
    } else {
      add(line, el('span', 'toggle leaf', '•'));
    }
    add(wrap, add(line, head(node)));
    if (open || !expandable(node)) {
      // The body and the children are built only now: a collapsed node costs one line of DOM.
      var b = body(node);
      var kids = (node.kids || []).filter(function (k) { return !state.visible || state.visible.has(k.id); });
      if (kids.length) add(b, renderKids(node, kids));
      if (b.childNodes.length) add(wrap, b);
    }
    return wrap;
  }
  function toggle(node, open) {
    if (open) { state.expanded.add(node.id); state.collapsed.delete(node.id); }
    else { state.collapsed.add(node.id); state.expanded.delete(node.id); if (state.forced) state.forced.delete(node.id); }
  }
  function renderKids(node, kids) {
    var box = el('div', 'kids');
    var limit = state.shown.get(node.id) || PAGE;
    kids.slice(0, limit).forEach(function (k) { add(box, renderNode(k)); });
    if (kids.length > limit) {
      var more = el('button', 'more page', 'show ' + num(Math.min(PAGE, kids.length - limit)) + ' more (' +
        num(kids.length - limit) + ' not shown)');
      more.addEventListener('click', function () {
        state.shown.set(node.id, limit + PAGE);
        box.replaceWith(renderKids(node, kids));
      });
      add(box, more);
    }
    return box;
  }
  function reveal(id) {
    var node = index.byId.get(id);
    if (!node) return;
    for (var p = index.parent.get(id), child = id; p; child = p, p = index.parent.get(p)) {
      var parent = index.byId.get(p);
      toggle(parent, true);
      var at = parent.kids.findIndex(function (k) { return k.id === child; });
      if (at >= (state.shown.get(p) || PAGE)) state.shown.set(p, at + 1);
    }
    draw();
    var target = document.getElementById('n-' + id);
    if (target) { target.scrollIntoView({ block: 'center' }); target.classList.add('flash'); }
  }

  // -- the header: usage, time split, timeline ---------------------------------------------------
  function usageTable(usage) {
    var t = el('table', 'usage');
    var hrow = el('tr');
    ['', 'calls', 'prompt tok', 'completion tok', 'loop-tokens', 'USD', 'model time (sum)'].forEach(function (c) { add(hrow, el('th', null, c)); });
    add(t, add(el('thead'), hrow));
    var tb = el('tbody');
    var rows = [['total', usage.total, 'total']];
    Object.keys(usage.by_depth).forEach(function (d) { rows.push(['depth ' + d, usage.by_depth[d], 'depth']); });
    Object.keys(usage.by_model).forEach(function (m) { rows.push([m, usage.by_model[m], 'model']); });
    rows.forEach(function (r) {
      var u = r[1], tr = el('tr', 'u-' + r[2]);
      add(tr, el('th', null, r[0]), el('td', null, num(u.calls)), el('td', null, num(u.prompt_tokens)),
        el('td', null, num(u.completion_tokens)), el('td', null, num(u.loop_tokens)), el('td', null, usd(u.usd)),
        el('td', null, secs(u.wall_s)));
      add(tb, tr);
    });
    return add(t, tb);
  }
  var CATS = { root: 'root model', repl: 'REPL', call: 'child model call', child: 'child run' };
  function timelineBox(tl) {
    var box = el('div', 'timeline-box');
    var wall = tl.wall_s || 0;
    var split = el('div', 'split');
    Object.keys(tl.split || {}).forEach(function (k, i) {
      var v = tl.split[k];
      add(split, add(el('span', 'split-item'), el('span', 'swatch s' + i), el('span', null, k + ' ' + secs(v) +
        (wall ? ' (' + Math.round(100 * v / wall) + '%)' : ''))));
    });
    add(box, add(el('div', 'label'), document.createTextNode('where the time went · ' + secs(wall) + ' wall')), split);
    var lanes = el('div', 'timeline');
    lanes.style.height = (tl.lanes * 14 + 4) + 'px';
    var track = el('div', 'track');  // bars sit right of the lane names
    ['root model', 'REPL', 'calls'].forEach(function (name, i) {
      if (i >= tl.lanes) return;
      var l = el('div', 'lane-name', name);
      l.style.top = (i * 14 + 2) + 'px';
      add(lanes, l);
    });
    tl.bars.forEach(function (b) {
      var bar = el('div', 'bar c-' + b.cat);
      bar.style.left = (wall ? 100 * b.s / wall : 0) + '%';
      bar.style.width = (wall ? 100 * (b.e - b.s) / wall : 0) + '%';
      bar.style.top = (b.lane * 14 + 2) + 'px';
      bar.title = b.label + ' · ' + CATS[b.cat] + ' · ' + secs(b.e - b.s) + ' from ' + secs(b.s);
      bar.setAttribute('data-node', b.id);
      bar.addEventListener('click', function () { reveal(b.id); });
      add(track, bar);
    });
    add(lanes, track);
    add(box, lanes);
    add(box, add(el('div', 'legend'), legend('root', 'root model'), legend('repl', 'REPL cell'),
      legend('call', 'child model call'), legend('child', 'child run (rlm_query)'),
      tl.shared ? el('span', null, num(tl.shared) + ' calls overlap others in the last lane (more concurrent calls than lanes)') : null));
    return box;
  }
  function legend(cat, text) { return add(el('span', 'legend-item'), el('span', 'swatch c-' + cat), el('span', null, text)); }

  function summary(run, label) {
    var s = el('section', 'summary');
    if (label) add(s, el('div', 'side-label', label));
    add(s, el('h1', null, run.query !== null ? short(run.query, 200) : '(no run start in the log)'));
    var status = run.done ? (run.finished ? badge('finished: ' + run.reason, 'ok') : badge('ended: ' + run.reason, 'warn'))
      : badge('no run end yet', 'live');
    add(s, add(el('div', 'answer'), el('span', 'label', 'answer '), status, textBlock(null, run.answer === null ? '(none)' : run.answer, 'answer:' + (label || ''), 'completion')));
    add(s, el('div', 'dim path', run.path + ' · ' + num(run.events) + ' events'));
    (run.warnings || []).forEach(function (w) { add(s, el('div', 'warning', '⚠ ' + w)); });
    add(s, usageTable(run.usage), timelineBox(run.timeline));
    return s;
  }

  // -- the toolbar -------------------------------------------------------------------------------
  var statusEl = el('span', 'status');
  function toolbar() {
    var bar = el('div', 'toolbar');
    var input = el('input');
    input.type = 'search';
    input.placeholder = 'search prompts, code, output, answers…';
    input.value = state.query;
    var timer = null;
    input.addEventListener('input', function () {
      clearTimeout(timer);
      timer = setTimeout(function () { state.query = input.value.toLowerCase(); runSearch(); draw(true); }, 150);
    });
    var expandBtn = el('button', null, 'expand all');
    expandBtn.addEventListener('click', function () { state.expandAll = true; state.collapsed.clear(); draw(); });
    var collapseBtn = el('button', null, 'collapse all');
    collapseBtn.addEventListener('click', function () {
      state.expandAll = false; state.expanded.clear();
      index.byId.forEach(function (n, id) { if (index.parent.get(id)) state.collapsed.add(id); });
      draw();
    });
    var count = el('span', 'count');
    if (state.hits) count.textContent = num(state.hits.size) + ' matching node' + (state.hits.size === 1 ? '' : 's');
    add(bar, input, count, expandBtn, collapseBtn, statusEl);
    return bar;
  }

  // -- pages -------------------------------------------------------------------------------------
  var toolbarEl = null, contentEl = el('div', 'content');
  function draw(keepToolbar) {
    if (!toolbarEl || !keepToolbar) {
      var fresh = toolbar();
      if (toolbarEl) toolbarEl.replaceWith(fresh);
      toolbarEl = fresh;
    } else {
      var c = toolbarEl.querySelector('.count');
      c.textContent = state.hits ? num(state.hits.size) + ' matching node' + (state.hits.size === 1 ? '' : 's') : '';
    }
    var content = el('div', 'content');
    if (DATA.mode === 'compare') drawCompare(content);
    else if (DATA.mode === 'index') drawIndex(content);
    else drawRun(content, DATA.run);
    contentEl.replaceWith(content);
    contentEl = content;
  }
  function drawRun(box, run) {
    add(box, summary(run));
    var tree = el('div', 'tree');
    run.runs.forEach(function (r) { if (!state.visible || state.visible.has(r.id)) add(tree, renderNode(r)); });
    if (!run.runs.length) add(tree, el('div', 'dim', 'waiting for the run to log its first event…'));
    add(box, tree);
  }
  function drawCompare(box) {
    var sides = DATA.sides;
    var grid = el('div', 'compare-head');
    sides.forEach(function (s) { add(grid, summary(s.run, s.label)); });
    add(box, grid);
    var table = el('table', 'compare');
    var tops = sides.map(function (s) { return s.run.runs[0] || { kids: [] }; });
    var turns = tops.map(function (t) { return t.kids.filter(function (k) { return k.k === 'turn'; }); });
    var rest = tops.map(function (t) { return t.kids.filter(function (k) { return k.k !== 'turn'; }); });
    var hr = el('tr');
    add(hr, el('th', 'row-label', ''));
    sides.forEach(function (s) { add(hr, el('th', null, s.label)); });
    add(table, hr);
    var n = Math.max(turns[0].length, turns[1].length);
    for (var i = 0; i < n; i++) {
      var row = el('tr', 'turn-row');
      add(row, el('th', 'row-label', 'turn ' + (i + 1)));
      for (var j = 0; j < 2; j++) {
        var cell = el('td');
        var t = turns[j][i];
        if (t && (!state.visible || state.visible.has(t.id))) add(cell, renderNode(t));
        else add(cell, el('div', 'dim', t ? '(no match)' : '—'));
        add(row, cell);
      }
      add(table, row);
    }
    var last = el('tr', 'end-row');
    add(last, el('th', 'row-label', 'result'));
    rest.forEach(function (items) {
      var cell = el('td');
      items.forEach(function (k) { if (!state.visible || state.visible.has(k.id)) add(cell, renderNode(k)); });
      add(last, cell);
    });
    add(table, last);
    add(box, table);
  }
  function drawIndex(box) {
    add(box, el('h1', null, 'eval results · ' + DATA.task), el('div', 'dim path', DATA.dir + ' · ' + num(DATA.rows.length) + ' runs'));
    (DATA.warnings || []).forEach(function (w) { add(box, el('div', 'warning', '⚠ ' + w)); });
    var cols = [['config', 'configuration'], ['n', 'runs'], ['score', 'mean score'], ['usd', 'USD'],
      ['loop_tokens', 'loop-tokens'], ['calls', 'calls'], ['wall_s', 'mean wall']];
    add(box, table(DATA.configs, cols, 'configs'));
    var rows = DATA.rows.filter(function (r) {
      return !state.query || (r.item_id + ' ' + r.config + ' ' + (r.prediction || '') + ' ' + r.reason).toLowerCase().indexOf(state.query) >= 0;
    });
    var rcols = [['item_id', 'item'], ['config', 'configuration'], ['length', 'length'], ['score', 'score'],
      ['usd', 'USD'], ['loop_tokens', 'loop-tokens'], ['calls', 'calls'], ['wall_s', 'wall'], ['reason', 'ended'],
      ['prediction', 'prediction'], ['href', 'run']];
    add(box, table(rows, rcols, 'runs'));
  }
  var sortBy = { runs: null, configs: null };
  function table(rows, cols, name) {
    var t = el('table', 'index ' + name);
    var hr = el('tr');
    cols.forEach(function (c) {
      var th = el('th', 'sortable', c[1]);
      th.addEventListener('click', function () {
        var s = sortBy[name];
        sortBy[name] = { key: c[0], desc: s && s.key === c[0] ? !s.desc : false };
        draw(true);
      });
      add(hr, th);
    });
    add(t, add(el('thead'), hr));
    var s = sortBy[name], sorted = rows.slice();
    if (s) sorted.sort(function (a, b) {
      var x = a[s.key], y = b[s.key];
      var r = x === y ? 0 : x === null || x === undefined ? 1 : y === null || y === undefined ? -1 : x < y ? -1 : 1;
      return s.desc ? -r : r;
    });
    var tb = el('tbody');
    sorted.forEach(function (r) {
      var tr = el('tr', r.error ? 'crashed' : '');
      cols.forEach(function (c) {
        var v = r[c[0]], td = el('td', 'col-' + c[0]);
        if (c[0] === 'href') {
          // Only links this tool wrote (relative page paths); never a script URL.
          if (v && !/^\s*[a-z][a-z0-9+.-]*:/i.test(v)) { var a = el('a', null, 'view'); a.setAttribute('href', v); add(td, a); }
        } else if (c[0] === 'usd') td.textContent = usd(v);
        else if (c[0] === 'wall_s') td.textContent = secs(v);
        else if (c[0] === 'score') td.textContent = v === null || v === undefined ? '-' : Number(v).toFixed(3);
        else if (c[0] === 'prediction') td.textContent = short(v, 60);
        else if (typeof v === 'number') td.textContent = num(v);
        else td.textContent = v === null || v === undefined ? '-' : String(v);
        add(tr, td);
      });
      add(tb, tr);
    });
    return add(t, tb);
  }

  // -- follow mode: poll the server for a newer state of the log ----------------------------------
  function follow() {
    var f = DATA.follow;
    if (!f) return;
    var offset = f.offset;
    function setStatus(text, cls) { statusEl.textContent = text; statusEl.className = 'status ' + cls; }
    function tick() {
      fetch(f.endpoint + '?offset=' + offset, { cache: 'no-store' }).then(function (r) {
        if (!r.ok) throw new Error('HTTP ' + r.status);
        return r.json();
      }).then(function (msg) {
        if (msg.run) {
          offset = msg.offset;
          DATA.run = msg.run;
          indexTree(DATA.run.runs);
          runSearch();
          draw(true);
        }
        if (DATA.run.done) { setStatus('● finished · ' + num(DATA.run.events) + ' events', 'ok'); return; }
        setStatus('● live · ' + num(DATA.run.events) + ' events', 'live');
        setTimeout(tick, f.interval_ms);
      }).catch(function () {
        setStatus('● disconnected (the server stopped); showing the last state', 'warn');
      });
    }
    setStatus(DATA.run.done ? '● finished' : '● live', DATA.run.done ? 'ok' : 'live');
    if (!DATA.run.done) setTimeout(tick, f.interval_ms);
  }

  // -- start -------------------------------------------------------------------------------------
  function roots() {
    if (DATA.mode === 'compare') return DATA.sides[0].run.runs.concat(DATA.sides[1].run.runs);
    if (DATA.mode === 'index') return [];
    return DATA.run.runs;
  }
  indexTree(roots());
  var ex = params.get('expand');
  if (ex && ex !== 'all') ex.split(',').forEach(function (id) {
    if (!index.byId.has(id)) return;
    toggle(index.byId.get(id), true);
    for (var p = index.parent.get(id); p; p = index.parent.get(p)) toggle(index.byId.get(p), true);
  });
  runSearch();
  app.replaceChildren();
  toolbarEl = toolbar();
  add(app, toolbarEl, contentEl);
  draw(true);
  document.body.setAttribute('data-ready', 'true');
  follow();
})();
