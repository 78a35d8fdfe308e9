// The CS dashboard's one script: applies the SSE stream (/v1/health/stream) to the page, no reload.
(function(){
  const page = document.body.dataset.customer || null;
  const url = '/v1/health/stream' + (page ? '?customer=' + encodeURIComponent(page) : '');
  const es = new EventSource(url);
  const arrow = {up:'\u25b2', down:'\u25bc', flat:'\u25ac'};
  function spark(values){
    if(!values.length) return '';
    const w=120,h=24,n=values.length, step = n>1 ? w/(n-1) : 0;
    const pts = values.map((v,i)=>(i*step).toFixed(1)+','+(h-v/100*h).toFixed(1)).join(' ');
    return '<svg width="'+w+'" height="'+h+'"><polyline fill="none" stroke="#4a67d6" points="'+pts+'"/></svg>';
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
      return;
    }
    let row = document.getElementById('c-' + s.customer_id);
    if(!row){
      row = document.createElement('tr'); row.id = 'c-' + s.customer_id;
      row.innerHTML = '<td><a></a></td><td class="score"></td><td class="trend"></td><td class="spark"></td>';
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
