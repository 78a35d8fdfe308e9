// The CS dashboard's one script: applies the SSE stream (/v1/health/stream) to the page, no reload.
(function(){
  const page = document.body.dataset.customer || null;
  const url = '/v1/health/stream' + (page ? '?customer=' + encodeURIComponent(page) : '');
  const es = new EventSource(url);
  const arrow = {up:'\u25b2', down:'\u25bc', flat:'\u25ac'};
  function spark(values){
    if(!values.length) return '';
    if(values.length === 1) return '<svg width="120" height="24"><circle cx="120" cy="' + (24 - values[0] / 100 * 24).toFixed(1) + '" r="2" fill="#4a67d6"/></svg>';
    const w=120,h=24,n=values.length, step = n>1 ? w/(n-1) : 0;
    // The values' own range, at least 20 points tall (as dashboard.py's _spark_range).
    let lo = Math.min(...values), hi = Math.max(...values);
    const pad = Math.max(0, (20 - (hi - lo)) / 2);
    lo = Math.max(0, lo - pad); hi = Math.min(100, hi + pad);
    if(hi <= lo){ lo = 0; hi = 100; }
    const pts = values.map((v,i)=>(i*step).toFixed(1)+','+(h-(v-lo)/(hi-lo)*h).toFixed(1)).join(' ');
    return '<svg width="'+w+'" height="'+h+'"><polyline fill="none" stroke="#4a67d6" points="'+pts+'"/></svg>';
  }
  function esc(s){return String(s == null ? '' : s).replace(/[&<>"]/g, c => ({'&':'&amp;','<':'&lt;','>':'&gt;','"':'&quot;'}[c]));}
  // The customer page: the score event says "changed"; the explanation comes from the API (one fetch).
  function explain(id){
    fetch('/v1/health/' + encodeURIComponent(id)).then(r => r.ok ? r.json() : null).then(h => {
      if(!h) return;
      document.getElementById('meta').textContent =
        ' \u00b7 churn risk ' + h.churn_risk + ' \u00b7 ' + h.active_users + ' active of ' + h.seats + ' seats';
      document.getElementById('contributions').innerHTML = Object.entries(h.explanation.contributions)
        .map(([k, v]) => '<tr><td>' + esc(k) + '</td><td>' + v.toFixed(1) + '</td></tr>').join('');
      document.getElementById('top').textContent = h.explanation.top_factors.join(', ') || 'none';
      document.getElementById('factors').innerHTML = h.explanation.factors.map(f => {
        const filled = f.max_points ? f.points / f.max_points * 100 : 0;
        const moved = f.change > 0 ? 'up' : f.change < 0 ? 'down' : 'flat';
        return '<tr><td>' + esc(f.name) + '</td><td>' + f.value.toFixed(2) + '</td><td><div class="bar"><i style="width:'
          + filled.toFixed(0) + '%"></i></div></td><td>' + f.points.toFixed(1) + ' / ' + f.max_points.toFixed(1)
          + '</td><td class="' + moved + '">' + (f.change >= 0 ? '+' : '') + f.change.toFixed(1) + '</td><td class="muted">'
          + esc(f.detail) + '</td></tr>';
      }).join('');
    });
  }
  function flash(el){el.classList.remove('flash'); void el.offsetWidth; el.classList.add('flash');}
  es.addEventListener('score', e => {
    const s = JSON.parse(e.data);
    if(page){
      if(s.customer_id !== page) return;
      const el = document.getElementById('score');
      el.textContent = s.score; el.className = 'big ' + s.band; flash(el);
      document.getElementById('band').textContent = s.band;
      const t = document.getElementById('trend');
      t.textContent = (arrow[s.trend_direction]||'') + ' ' + (s.trend>0?'+':'') + s.trend; t.className = s.trend_direction;
      document.getElementById('spark').innerHTML = spark(s.sparkline);
      explain(page);
      return;
    }
    let row = document.getElementById('c-' + s.customer_id);
    if(!row){
      if(document.body.dataset.filtered) return;  // a filtered list shows only the customers it matched
      row = document.createElement('tr'); row.id = 'c-' + s.customer_id;
      row.innerHTML = '<td><a></a></td><td class="score"></td><td class="trend"></td><td class="spark"></td>'
        + '<td class="plan"></td><td class="csm"></td><td class="mrr"></td>';
      row.querySelector('a').href = '/customers/' + encodeURIComponent(s.customer_id);
      row.querySelector('a').textContent = s.customer_id;
    }
    const body = document.querySelector('#band-' + s.band + ' tbody');
    if(row.parentElement !== body) body.appendChild(row);
    const sc = row.querySelector('.score'); sc.textContent = s.score; sc.className = 'score ' + s.band;
    const tr = row.querySelector('.trend'); tr.textContent = (arrow[s.trend_direction]||'') + ' ' + s.trend;
    tr.className = 'trend ' + s.trend_direction;
    row.querySelector('.spark').innerHTML = spark(s.sparkline);
    flash(row);
  });
  es.addEventListener('event', e => {
    const ev = JSON.parse(e.data);
    const list = document.getElementById('events'); if(!list) return;
    const li = document.createElement('tr');
    li.innerHTML = '<td></td><td></td><td class="muted"></td>';
    li.children[0].textContent = new Date(ev.timestamp).toISOString().replace('T',' ').slice(0,19);
    li.children[1].textContent = ev.name; li.children[2].textContent = ev.person_id || '';
    list.prepend(li); flash(li);
    while(list.children.length > 50) list.lastChild.remove();
  });
  es.addEventListener('alert', e => {
    const a = JSON.parse(e.data);
    const list = document.getElementById('alerts'); if(!list) return;
    const li = document.createElement('li'); li.textContent = a.rule + ': ' + a.message;
    list.prepend(li); flash(li);
  });
})();
