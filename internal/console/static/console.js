// fqdngate console: live decisions (server-sent events) and the copy
// button. Everything else is plain server-rendered HTML.
(function () {
  'use strict';
  var maxRows = 500;

  var table = document.getElementById('live');
  if (table && table.dataset.src && window.EventSource) {
    var body = table.tBodies[0];
    var status = document.getElementById('live-status');
    var shown = 0, dropped = 0, connected = false;
    var say = function () {
      var s = connected ? 'Live: ' : 'Disconnected, reconnecting: ';
      s += shown + (shown === 1 ? ' decision' : ' decisions') + ' shown';
      if (dropped) s += '; ' + dropped + ' not shown because this browser fell behind';
      status.textContent = s + '.';
    };
    var cell = function (tr, text, tag) {
      var td = document.createElement(tag || 'td');
      if (tag === 'th') td.scope = 'row';
      td.textContent = text;
      tr.appendChild(td);
      return td;
    };
    var es = new EventSource(table.dataset.src);
    es.onopen = function () { connected = true; say(); };
    es.onerror = function () { connected = false; say(); };
    es.addEventListener('dropped', function (ev) { dropped += parseInt(ev.data, 10) || 0; say(); });
    es.addEventListener('decision', function (ev) {
      var d = JSON.parse(ev.data);
      var empty = body.querySelector('tr.empty');
      if (empty) empty.remove();
      var tr = document.createElement('tr');
      cell(tr, d.time.slice(11, 23));
      cell(tr, d.component);
      cell(tr, d.source);
      cell(tr, (d.groups || []).join(', '));
      cell(tr, d.name, 'th');
      cell(tr, d.port ? String(d.port) : '').className = 'num';
      cell(tr, d.qtype || '');
      var a = document.createElement('span');
      a.className = 'action a-' + d.action;
      a.textContent = d.action;
      cell(tr, '').appendChild(a);
      cell(tr, d.rule || '');
      cell(tr, d.reason);
      body.insertBefore(tr, body.firstChild);
      shown++;
      while (body.rows.length > maxRows) body.deleteRow(-1);
      say();
    });
  }

  var copy = document.getElementById('copy');
  if (copy) {
    copy.addEventListener('click', function () {
      var src = document.getElementById(copy.dataset.target);
      var out = document.getElementById('copy-status');
      var fallback = function () {
        src.focus();
        src.select();
        var ok = false;
        try { ok = document.execCommand('copy'); } catch (e) { ok = false; }
        out.textContent = ok ? 'Copied.' : 'Selected: press Ctrl+C (or Cmd+C) to copy.';
      };
      if (navigator.clipboard && window.isSecureContext) {
        navigator.clipboard.writeText(src.value).then(function () { out.textContent = 'Copied.'; }, fallback);
      } else {
        fallback();
      }
    });
  }
})();
