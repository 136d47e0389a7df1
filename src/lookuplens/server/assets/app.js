/* lookuplens dashboard: fills in what needs the model and runs the playground.
   Served from the package; no external scripts. Markup in API answers is built (and
   escaped) by the server; everything else is inserted as text. */
(function () {
  'use strict';

  function $(sel, root) { return (root || document).querySelector(sel); }
  function $all(sel, root) { return Array.prototype.slice.call((root || document).querySelectorAll(sel)); }

  function fmt(x, digits) {
    if (x === null || x === undefined || (typeof x === 'number' && !isFinite(x))) { return '\u2013'; }
    var d = digits === undefined ? 3 : digits;
    if (x === 0) { return '0'; }
    if (Math.abs(x) >= 1000) { return Math.round(x).toLocaleString('en'); }
    if (Math.abs(x) >= Math.pow(10, -d)) { return x.toFixed(d); }
    return x.toExponential(2);
  }

  function intOr(value, fallback) {
    var v = parseInt(value, 10);
    return isNaN(v) ? fallback : v;
  }

  function visible(text) {
    var out = String(text).replace(/ /g, '\u00b7').replace(/\n/g, '\u21b5').replace(/\t/g, '\u21e5');
    return out.length ? out : '\u2205';
  }

  function el(tag, attrs, children) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) {
      if (k === 'text') { node.textContent = attrs[k]; } else { node.setAttribute(k, attrs[k]); }
    });
    (children || []).forEach(function (c) { node.appendChild(c); });
    return node;
  }

  function getJSON(url) {
    return fetch(url, { credentials: 'same-origin', headers: { 'Accept': 'application/json' } })
      .then(answer);
  }

  function postJSON(url, body) {
    return fetch(url, {
      method: 'POST', credentials: 'same-origin',
      headers: { 'Content-Type': 'application/json', 'Accept': 'application/json' },
      body: JSON.stringify(body)
    }).then(answer);
  }

  function answer(r) {
    return r.json().catch(function () { return {}; }).then(function (body) {
      if (!r.ok) {
        var msg = body && (body.message || body.detail);
        if (Array.isArray(msg)) { msg = msg.map(function (e) { return e.msg; }).join('; '); }
        throw new Error(msg || ('request failed (' + r.status + ')'));
      }
      return body;
    });
  }

  /* ------------------------------------------------------------ model status */
  function modelStatus() {
    var node = $('#model-status');
    if (!node) { return; }
    getJSON(node.getAttribute('data-src')).then(function (m) {
      node.textContent = m.loaded ? 'model loaded' : 'model loads on first use';
      node.title = m.source || '';
    }).catch(function () { node.textContent = ''; });
  }

  /* ------------------------------------------------------------ neuron and pair pages */
  function fillPrompts() {
    var box = $('#prompts[data-src]');
    if (!box) { return; }
    box.classList.add('pending');
    getJSON(box.getAttribute('data-src')).then(function (res) {
      res.prompts.forEach(function (p) {
        $all('.toks[data-example="' + p.example_id + '"]', box).forEach(function (t) {
          t.innerHTML = p.html;  /* built and escaped by the server */
          t.classList.remove('pending');
          t.classList.add('shaded');
        });
      });
      box.classList.remove('pending');
      box.setAttribute('data-loaded', res.kind);
    }).catch(function (e) {
      box.insertBefore(el('p', { 'class': 'warn', text: 'Shading needs the model: ' + e.message }), box.firstChild);
      box.setAttribute('data-loaded', 'error');
    });
  }

  function fillVocab() {
    var box = $('#vocab[data-src]');
    if (!box) { return; }
    getJSON(box.getAttribute('data-src')).then(function (res) {
      box.innerHTML = res.html;  /* built and escaped by the server */
      box.classList.remove('pending');
      box.setAttribute('data-loaded', '1');
    }).catch(function (e) {
      box.textContent = 'Promoted and suppressed tokens need the model: ' + e.message;
      box.setAttribute('data-loaded', 'error');
    });
  }

  /* ------------------------------------------------------------ playground */
  function playground() {
    var form = $('#play');
    if (!form) { return; }
    var state = { scales: {}, position: -1, last: null, seq: 0 };
    String(form.getAttribute('data-off') || '').split(',').forEach(function (s) {
      var m = /^(\d+)\.(\d+)$/.exec(s.trim());
      if (m) { state.scales['L' + m[1] + 'H' + m[2]] = 0; }
    });
    var busy = $('#busy');
    var error = $('#error');
    var fix = null;

    function neuron() {
      var m = /^\s*[Ll](\d+)[Nn](\d+)\s*$/.exec($('#neuron-name').value);
      if (!m) { throw new Error('write the neuron as L<layer>N<neuron>, e.g. L1N5'); }
      return { layer: parseInt(m[1], 10), neuron: parseInt(m[2], 10) };
    }

    function request() {
      var n = neuron();
      var heads = Object.keys(state.scales).map(function (k) {
        var m = /^L(\d+)H(\d+)$/.exec(k);
        return { layer: parseInt(m[1], 10), head: parseInt(m[2], 10), scale: state.scales[k] };
      }).filter(function (h) { return h.scale !== 1; });
      var scale = parseFloat($('#neuron-scale').value);
      return {
        prompt: $('#prompt').value,
        layer: n.layer, neuron: n.neuron,
        position: intOr($('#position').value, -1),
        heads: heads,
        neuron_scale: isFinite(scale) ? scale : 1
      };
    }

    function working(on) {
      busy.hidden = !on;
      form.setAttribute('aria-busy', on ? 'true' : 'false');
    }

    function fail(e) {
      error.textContent = e.message;
      error.hidden = false;
      working(false);
    }

    function run() {
      var body;
      try { body = request(); } catch (e) { fail(e); return; }
      error.hidden = true;
      working(true);
      var seq = ++state.seq;
      postJSON('/api/playground', body).then(function (res) {
        if (seq !== state.seq) { return; }
        state.last = res;
        draw(res);
        working(false);
      }).catch(fail);
    }

    function markPosition(box, pos) {
      $all('.t', box).forEach(function (t, i) {
        t.classList.toggle('chosen', i === pos);
        t.setAttribute('data-pos', String(i));
      });
    }

    function draw(res) {
      var r = res.result;
      $('#result').hidden = false;
      $('#res-neuron').textContent = 'L' + r.layer + 'N' + r.neuron;
      $('#res-pos').textContent = String(r.position);
      $('#res-token').textContent = visible(r.tokens[r.position]);
      $('#act-clean').textContent = fmt(r.activation, 4);
      var patched = $('#act-patched');
      patched.textContent = fmt(r.patched_activation, 4);
      patched.setAttribute('data-value', String(r.patched_activation));
      $('#act-clean').setAttribute('data-value', String(r.activation));
      patched.className = 'v' + (r.patched_activation < r.activation - 1e-9 ? ' delta-down' :
        r.patched_activation > r.activation + 1e-9 ? ' delta-up' : '');
      $('#pre-act').textContent = fmt(r.pre_activation, 4);
      var tp = $('#tok-prob');
      if (r.neuron_token) {
        tp.textContent = fmt(r.neuron_token.prob, 4) + ' \u2192 ' + fmt(r.patched_neuron_token.prob, 4);
        tp.title = 'token ' + JSON.stringify(r.neuron_token.token);
      } else { tp.textContent = '\u2013'; }
      $('#toks-clean').innerHTML = res.html_clean;  /* built and escaped by the server */
      $('#toks-patched').innerHTML = res.html_patched;
      markPosition($('#toks-clean'), r.position);
      markPosition($('#toks-patched'), r.position);
      drawHeads(r);
      drawPredictions(r);
      var other = Object.keys(r.other_terms).map(function (k) { return k + ' ' + fmt(r.other_terms[k]); });
      $('#other-terms').textContent = 'Other direct terms: ' + other.join(', ');
      $('#result').setAttribute('data-ready', String(state.seq));
      if (fix) { fix.refresh(); }
    }

    function drawHeads(r) {
      var body = $('#heads tbody');
      body.textContent = '';
      var top = r.heads.reduce(function (m, h) { return Math.max(m, Math.abs(h.direct)); }, 0) || 1;
      r.heads.forEach(function (h) {
        var name = 'L' + h.layer + 'H' + h.head;
        var scale = state.scales[name] === undefined ? 1 : state.scales[name];
        var bar = el('span', { 'class': h.direct < 0 ? 'neg' : '' });
        bar.style.width = Math.round(130 * Math.abs(h.direct) / top) + 'px';
        var input = el('input', { type: 'number', step: '0.5', value: String(scale), 'class': 'scale', 'aria-label': 'scale of ' + name });
        input.addEventListener('change', function () {
          var v = parseFloat(input.value);
          state.scales[name] = isFinite(v) ? v : 1;
          run();
        });
        var off = el('button', { type: 'button', 'class': 'small off' + (scale === 0 ? ' is-off' : ''), text: scale === 0 ? 'switch on' : 'switch off' });
        off.addEventListener('click', function () {
          state.scales[name] = (state.scales[name] === 0) ? 1 : 0;
          run();
        });
        var tr = el('tr', { 'data-head': name, 'class': scale === 0 ? 'head-off' : '' }, [
          el('td', { text: name }),
          el('td', { 'class': 'num', text: fmt(h.direct, 4) }),
          el('td', { 'class': 'bar-cell' }, [bar]),
          el('td', {}, [input]),
          el('td', {}, [off])
        ]);
        body.appendChild(tr);
      });
    }

    function drawPredictions(r) {
      var body = $('#preds tbody');
      body.textContent = '';
      for (var i = 0; i < Math.max(r.top.length, r.patched_top.length); i++) {
        var a = r.top[i], b = r.patched_top[i];
        body.appendChild(el('tr', {}, [
          el('td', {}, [el('span', { 'class': 'tokpill', text: a ? visible(a.token) : '' })]),
          el('td', { 'class': 'num', text: a ? fmt(a.prob, 4) : '' }),
          el('td', {}, [el('span', { 'class': 'tokpill', text: b ? visible(b.token) : '' })]),
          el('td', { 'class': 'num', text: b ? fmt(b.prob, 4) : '' })
        ]));
      }
    }

    function generate() {
      var body;
      try { body = request(); } catch (e) { fail(e); return; }
      body.max_new_tokens = parseInt($('#max-new').value, 10) || 0;
      error.hidden = true;
      working(true);
      postJSON('/api/generate', body).then(function (res) {
        $('#gen').hidden = false;
        $('#gen-clean').textContent = res.result.prompt + res.result.clean;
        $('#gen-steered').textContent = res.result.prompt + res.result.steered;
        $('#gen').setAttribute('data-ready', '1');
        working(false);
      }).catch(fail);
    }

    function why() {
      var body = {
        prompt: $('#prompt').value,
        position: intOr($('#position').value, -1),
        target: $('#why-target').value || null
      };
      error.hidden = true;
      working(true);
      postJSON('/api/why', body).then(function (res) {
        var view = $('#why-view');
        view.innerHTML = res.html;  /* built and escaped by the server */
        view.hidden = false;
        view.setAttribute('data-ready', '1');
        working(false);
      }).catch(fail);
    }

    form.addEventListener('submit', function (ev) { ev.preventDefault(); run(); });
    $('#generate').addEventListener('click', generate);
    $('#why').addEventListener('click', why);
    $('#reset-heads').addEventListener('click', function () { state.scales = {}; run(); });
    $all('button[data-scale]', form).forEach(function (b) {
      b.addEventListener('click', function () {
        $('#neuron-scale').value = b.getAttribute('data-scale');
        run();
      });
    });
    ['#toks-clean', '#toks-patched'].forEach(function (sel) {
      $(sel).addEventListener('click', function (ev) {
        var t = ev.target.closest('.t');
        if (!t || !t.hasAttribute('data-pos')) { return; }
        $('#position').value = t.getAttribute('data-pos');
        run();
      });
    });
    fix = fixPanel({ request: request, last: function () { return state.last; } });
    if ($('#prompt').value.trim()) { run(); }
  }

  /* ------------------------------------------------------------ make this a fix */
  function fixPanel(play) {
    var panel = $('#fix-panel');
    if (!panel) { return null; }
    var form = $('#fixform');
    var error = $('#fix-error');
    var busy = $('#fix-busy');
    var out = $('#fix-result');
    var auto = { target: null, prompts: null };

    function headEdit() {
      var r = $('input[name=head_edit]:checked', form);
      return r ? r.value : 'path';
    }

    /* the same names as lookuplens.fix.edits.Edit.name */
    function editNames(req) {
      var names = [];
      var neuron = 'L' + req.layer + 'N' + req.neuron;
      req.heads.forEach(function (h) {
        var head = 'L' + h.layer + 'H' + h.head;
        names.push((headEdit() === 'path' ? head + '\u2192' + neuron : head) + ' \u00d7' + h.scale);
      });
      if (req.neuron_scale !== 1) { names.push(neuron + ' \u00d7' + req.neuron_scale); }
      return names;
    }

    function showTarget() {
      $('#fix-target-shown').textContent = visible($('#fix-target').value);
    }

    function refresh() {
      var req;
      try { req = play.request(); } catch (e) { $('#fix-edits').textContent = e.message; return; }
      var names = editNames(req);
      $('#fix-edits').textContent = names.length ? names.join(' + ') :
        'none yet: switch a head off or scale it, or scale the neuron';
      $all('.fix-neuron', panel).forEach(function (n) { n.textContent = 'L' + req.layer + 'N' + req.neuron; });
      var last = play.last();
      var token = last && last.result.neuron_token ? last.result.neuron_token.token : null;
      var target = $('#fix-target');
      if (token !== null && (target.value === '' || target.value === auto.target)) {
        target.value = token;
        auto.target = token;
      }
      var prompts = $('#fix-prompts');
      if (req.prompt.trim() && (prompts.value === '' || prompts.value === auto.prompts)) {
        prompts.value = req.prompt;
        auto.prompts = req.prompt;
      }
      showTarget();
    }

    function lines(text) {
      return text.split('\n').map(function (s) { return s.replace(/\r$/, ''); })
        .filter(function (s) { return s.trim() !== ''; });
    }

    function controls() {
      return lines($('#fix-controls').value).map(function (line, i) {
        var at = line.lastIndexOf('=>');
        if (at < 0) { throw new Error('control ' + (i + 1) + ' needs => and the expected next token'); }
        return { prompt: line.slice(0, at).replace(/\s+$/, ''), expected: line.slice(at + 2) };
      });
    }

    function fail(e) {
      error.textContent = e.message;
      error.hidden = false;
    }

    function number(value, label) {
      return el('div', { 'class': 'number' }, [
        el('div', { 'class': 'v', text: value }), el('div', { 'class': 'k', text: label })
      ]);
    }

    function table(head, rows) {
      return el('div', { 'class': 'scroll' }, [el('table', { 'class': 'data' }, [
        el('thead', {}, [el('tr', {}, head.map(function (h) { return el('th', { text: h }); }))]),
        el('tbody', {}, rows.map(function (r) {
          return el('tr', {}, r.map(function (c) { return el('td', { text: c }); }));
        }))
      ])]);
    }

    function draw(s) {
      out.textContent = '';
      var t = s.target;
      out.appendChild(el('h3', {}, [
        el('span', { text: 'Fix ' }), el('span', { 'class': 'mono', text: s.fix }),
        el('span', { 'class': 'badge ' + (s.meets_requirement ? 'met' : 'unmet'),
          text: s.meets_requirement ? 'requirement met' : 'requirement not met' })
      ]));
      if (!(s.effect > 0)) {
        out.appendChild(el('p', { 'class': 'warn', text: 'This edit does not move p(target) in the ' +
          "goal's direction on these prompts (effect " + fmt(s.effect, 4) + '): check the target, ' +
          'the goal and the interventions.' }));
      }
      var se = s.side_effects;
      var c = s.controls;
      out.appendChild(el('div', { 'class': 'numbers', id: 'fix-numbers' }, [
        number(fmt(s.p_target.before, 4) + ' \u2192 ' + fmt(s.p_target.after, 4),
          'mean p(' + visible(t.token) + '), before \u2192 after'),
        number(fmt(s.achieved, 3), 'requirement: ' + t.requirement + ' (' + t.require + ')'),
        number(fmt(se.kl, 5), 'side effect: mean KL per held-out token without the target, budget ' + t.max_kl),
        number(fmt(se.kl_all, 5), 'plain KL (target included)'),
        number((se.loss_change >= 0 ? '+' : '') + fmt(se.loss_change, 5), 'held-out loss change'),
        number(c.n ? fmt(c.before, 2) + ' \u2192 ' + fmt(c.after, 2) : '\u2013',
          c.n ? 'controls answered right (' + c.n + ')' : 'controls: none given')
      ]));
      out.appendChild(el('h4', { text: 'p(target) on each prompt' }));
      var rows = table(['before', 'after', 'top prediction after', 'prompt (its end)'],
        s.prompts.map(function (p) {
          var end = p.prompt.length > 90 ? '\u2026' + p.prompt.slice(-90) : p.prompt;
          return [fmt(p.before, 4), fmt(p.after, 4), visible(p.top_after), end];
        }));
      $all('tbody tr', rows).forEach(function (tr, i) { tr.title = s.prompts[i].prompt; });
      out.appendChild(rows);
      if (s.naive.length && !(s.effect > 0)) {
        out.appendChild(el('p', { 'class': 'note', text: 'No comparison with the naive edits: ' +
          'it needs an effect in the goal\'s direction.' }));
      } else if (s.naive.length) {
        out.appendChild(el('h4', { text: 'Naive edits at equal effect' }));
        out.appendChild(table(['naive edit', 'at effect', 'its KL', "the fix's KL", 'naive KL / fix KL'],
          s.naive.map(function (n) {
            if (n.at_effect === null) {
              return [n.edit, "no effect in the goal's direction to compare", '', '', ''];
            }
            return [n.edit, fmt(n.at_effect, 4), fmt(n.naive_kl, 5), fmt(n.fix_kl, 5),
              n.kl_ratio === null ? '\u2013' : fmt(n.kl_ratio, 2) + '\u00d7'];
          })));
      }
      var report = el('a', { href: s.report_url, target: '_blank', rel: 'noopener', id: 'fix-report',
        text: 'Open the report' });
      out.appendChild(el('div', { 'class': 'fix-export' }, [
        el('h4', { text: 'Exported' }),
        el('p', {}, [el('span', { text: 'Folder: ' }), el('code', { id: 'fix-folder', text: s.folder })]),
        el('p', {}, [el('span', { text: 'Edited model (save_pretrained): ' }), el('code', { text: s.model_dir })]),
        el('p', {}, [report, el('span', { text: ' \u00b7 ' }),
          el('a', { href: s.fix_json_url, target: '_blank', rel: 'noopener', text: 'fix.json' })])
      ]));
      out.hidden = false;
      out.setAttribute('data-ready', s.name);
    }

    function verify() {
      var req, body;
      try {
        req = play.request();
        body = {
          layer: req.layer, neuron: req.neuron, heads: req.heads, neuron_scale: req.neuron_scale,
          head_edit: headEdit(),
          target: $('#fix-target').value,
          goal: $('#fix-goal').value,
          prompts: lines($('#fix-prompts').value),
          controls: controls(),
          max_kl: parseFloat($('#fix-max-kl').value)
        };
        if (!isFinite(body.max_kl)) { throw new Error('max KL must be a number above 0'); }
      } catch (e) { fail(e); return; }
      error.hidden = true;
      busy.textContent = 'verifying\u2026';
      busy.hidden = false;
      $('#fix-verify').disabled = true;
      var poll = setInterval(function () {
        getJSON('/api/fix/status').then(function (st) {
          if (st.running && st.message) { busy.textContent = 'verifying\u2026 ' + st.message; }
        }).catch(function () {});
      }, 1000);
      function done() {
        clearInterval(poll);
        busy.hidden = true;
        $('#fix-verify').disabled = false;
      }
      postJSON('/api/fix', body).then(function (s) { done(); draw(s); })
        .catch(function (e) { done(); fail(e); });
    }

    form.addEventListener('submit', function (ev) { ev.preventDefault(); verify(); });
    panel.addEventListener('toggle', refresh);
    $all('input[name=head_edit]', form).forEach(function (r) { r.addEventListener('change', refresh); });
    $('#fix-target').addEventListener('input', showTarget);
    refresh();
    return { refresh: refresh };
  }

  document.addEventListener('DOMContentLoaded', function () {
    modelStatus();
    fillPrompts();
    fillVocab();
    playground();
  });
})();
