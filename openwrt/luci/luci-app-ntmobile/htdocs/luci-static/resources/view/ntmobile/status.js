'use strict';
'require view';
'require rpc';
'require poll';
'require uci';
'require dom';

// Status of the NTMobile daemon, read from its ubus object every poll interval: registration,
// uplink and the last handovers, the peers with the path each takes, the published LAN hosts,
// a live chart of the traffic per peer with the handovers marked, and the drop counters that
// point at a problem. The page is built once; each poll only replaces the contents of its parts,
// so a handover shows up without a reload.

const callStatus = rpc.declare({ object: 'ntmobile', method: 'status' });
const callPeers = rpc.declare({ object: 'ntmobile', method: 'peers', expect: { peers: [] } });

const POLL_SECONDS = 5;
/** Samples the chart keeps: five minutes at the poll interval. */
const CHART_SAMPLES = 60;
const CHART_COLOURS = [ '#1f77b4', '#d62728', '#2ca02c', '#9467bd', '#ff7f0e', '#17becf' ];
const SVG_NS = 'http://www.w3.org/2000/svg';

/** The counters of a lost packet or a failed step that an operator should look at. */
const DROP_COUNTERS = [
	[ 'engine', 'outDropNoTunnel', _('LAN → tunnel: no tunnel for the destination VIP') ],
	[ 'engine', 'outDropNoEndpoint', _('LAN → tunnel: the peer has no known address') ],
	[ 'engine', 'outDropSendFailed', _('LAN → tunnel: the uplink refused the packet') ],
	[ 'engine', 'inDropUnknownSpi', _('tunnel → LAN: unknown SPI (an old or foreign tunnel)') ],
	[ 'engine', 'inDropBadIcv', _('tunnel → LAN: failed authentication') ],
	[ 'engine', 'inDropReplayed', _('tunnel → LAN: replayed packet') ],
	[ 'engine', 'inDropTooOld', _('tunnel → LAN: behind the anti-replay window') ],
	[ 'engine', 'inDropSpoofedSource', _('tunnel → LAN: inner source is not the peer\'s VIP') ],
	[ 'engine', 'inDropInvalid', _('tunnel → LAN: malformed packet') ],
	[ 'engine', 'inDropWriteFailed', _('tunnel → LAN: could not be written to the LAN') ],
	[ 'daemon', 'keepaliveTimeouts', _('keepalives the DC did not answer') ],
	[ 'daemon', 'directionsFailed', _('names that could not be reached (failed directions)') ],
	[ 'daemon', 'registrationRefused', _('registrations the DC refused') ],
	[ 'daemon', 'loginFailures', _('failed logins at the AS') ]
];

/** direct, relay, gateway or mesh, and the rest of the daemon's route text. */
function pathKind(route) {
	const m = /^(direct|relay|gateway|mesh)\b\s*(.*)$/.exec(route || '');
	if (!m)
		return { kind: route || '?', detail: '' };
	return { kind: m[1], detail: m[2].replace(/^\((.*)\)$/, '$1') };
}

/** A duration in seconds, short: "35 s", "12 min", "3 h 5 min", "2 d". */
function duration(s) {
	if (s < 60)
		return _('%d s').format(s);
	if (s < 3600)
		return _('%d min').format(Math.floor(s / 60));
	if (s < 86400)
		return _('%d h %d min').format(Math.floor(s / 3600), Math.floor(s % 3600 / 60));
	return _('%d d').format(Math.floor(s / 86400));
}

/** "12:03:04 (35 s ago)" against the daemon's clock. */
function when(ms, now) {
	if (!ms)
		return _('never');
	const ago = Math.max(0, Math.round((now - ms) / 1000));
	return '%s (%s)'.format(new Date(ms).toLocaleTimeString(), ago < 1 ? _('just now') : _('%s ago').format(duration(ago)));
}

function bytes(n) {
	return '%1024.2mB'.format(n || 0);
}

/** Bytes per second, in B/s, KiB/s or MiB/s. */
function rate(n) {
	if (n < 1024)
		return '%d B/s'.format(n);
	if (n < 1048576)
		return '%.1f KiB/s'.format(n / 1024);
	return '%.1f MiB/s'.format(n / 1048576);
}

/** A LuCI table: titles, then rows of cells; `attrs` of a row may carry data-* for tests and CSS. */
function table(id, titles, rows, placeholder) {
	const head = E('tr', { 'class': 'tr table-titles' }, titles.map(function(t) { return E('th', { 'class': 'th' }, t); }));
	const body = rows.length ? rows.map(function(r) {
		return E('tr', Object.assign({ 'class': 'tr' }, r.attrs || {}), r.cells.map(function(c, i) {
			return E('td', { 'class': 'td', 'data-title': titles[i] }, c);
		}));
	}) : [ E('tr', { 'class': 'tr placeholder' }, E('td', { 'class': 'td', 'colspan': titles.length }, E('em', placeholder))) ];
	return E('table', { 'class': 'table', 'id': id }, [ head ].concat(body));
}

/** Two-column key/value table as on LuCI's overview page. */
function facts(id, pairs) {
	return E('table', { 'class': 'table', 'id': id }, pairs.map(function(p) {
		return E('tr', { 'class': 'tr', 'data-key': p[0] }, [
			E('td', { 'class': 'td left', 'width': '33%' }, p[1]),
			E('td', { 'class': 'td left' }, p[2])
		]);
	}));
}

function svg(tag, attrs, children) {
	const el = document.createElementNS(SVG_NS, tag);
	for (const k in attrs)
		el.setAttribute(k, attrs[k]);
	(children || []).forEach(function(c) {
		el.appendChild(typeof c === 'string' ? document.createTextNode(c) : c);
	});
	return el;
}

/**
 * Traffic per peer (bytes/s, both directions) over the last minutes, handovers as dashed lines
 * with the time each took: a dip in a line next to a marker is the gap a handover left.
 */
function chart(samples, handovers, peers) {
	const W = 760, H = 180, L = 84, R = 10, T = 12, B = 24;
	const nodes = peers.map(function(p) { return p.node; });
	const t1 = samples.length ? samples[samples.length - 1].t : Date.now();
	// from the first sample (at least a minute back) to the last: the lines fill the width
	const t0 = Math.min(samples.length ? samples[0].t : t1, t1 - 60000);
	let max = 1024;
	samples.forEach(function(s) { nodes.forEach(function(n) { max = Math.max(max, s.rates[n] || 0); }); });
	const x = function(t) { return L + (W - L - R) * (t - t0) / (t1 - t0 || 1); };
	const y = function(v) { return T + (H - T - B) * (1 - v / max); };
	const parts = [
		svg('rect', { x: L, y: T, width: W - L - R, height: H - T - B, fill: 'none', stroke: '#ccc' }),
		svg('line', { x1: L, x2: W - R, y1: y(max / 2), y2: y(max / 2), stroke: '#eee' }),
		svg('text', { x: L - 6, y: T + 10, 'text-anchor': 'end', 'font-size': 11, fill: '#666' }, [ rate(max) ]),
		svg('text', { x: L - 6, y: H - B, 'text-anchor': 'end', 'font-size': 11, fill: '#666' }, [ '0' ]),
		svg('text', { x: L, y: H - 6, 'font-size': 11, fill: '#666' }, [ _('%s ago').format(duration(Math.round((t1 - t0) / 1000))) ]),
		svg('text', { x: W - R, y: H - 6, 'text-anchor': 'end', 'font-size': 11, fill: '#666' }, [ _('now') ])
	];
	// newest first; a handover close to a labelled one (a lost uplink, then the new one) gets no label
	let labelled = Infinity;
	handovers.filter(function(h) { return h.at >= t0; }).reverse().forEach(function(h) {
		const hx = x(h.at);
		parts.push(svg('line', { x1: hx, x2: hx, y1: T, y2: H - B, stroke: '#e67e22', 'stroke-dasharray': '4 3', 'class': 'ntm-handover-mark' }));
		if (Math.abs(labelled - hx) < 100)
			return;
		labelled = hx;
		// the label on the side of the line with room for it
		const left = hx > (L + W - R) / 2;
		parts.push(svg('text', { x: left ? hx - 4 : hx + 4, y: T + 14, 'text-anchor': left ? 'end' : 'start', 'font-size': 11, fill: '#e67e22',
			stroke: '#fff', 'stroke-width': 3, 'paint-order': 'stroke' }, [ _('handover %d ms').format(h.ms) ]));
	});
	nodes.forEach(function(n, i) {
		const pts = samples.filter(function(s) { return n in s.rates; }).map(function(s) { return x(s.t).toFixed(1) + ',' + y(s.rates[n]).toFixed(1); });
		if (pts.length > 1)
			parts.push(svg('polyline', { points: pts.join(' '), fill: 'none', stroke: CHART_COLOURS[i % CHART_COLOURS.length], 'stroke-width': 2, 'data-node': n }));
	});
	const legend = E('div', { 'style': 'display:flex;flex-wrap:wrap;gap:1em;font-size:90%' }, nodes.map(function(n, i) {
		return E('span', {}, [ E('span', { 'style': 'display:inline-block;width:1em;height:.4em;margin-right:.3em;vertical-align:middle;background:' + CHART_COLOURS[i % CHART_COLOURS.length] }), n ]);
	}));
	return E('div', {}, [
		svg('svg', { id: 'ntm-chart-svg', 'data-max': Math.round(max), viewBox: '0 0 ' + W + ' ' + H, width: '100%', style: 'max-width:' + W + 'px', role: 'img', 'aria-label': _('Traffic per peer') }, parts),
		nodes.length ? legend : E('em', {}, _('No peers yet: the chart starts with the first tunnel.'))
	]);
}

return view.extend({
	load: function() {
		/** Samples for the chart: {t, rates: {node: bytes/s}}, and the totals they came from. */
		this.samples = [];
		this.lastTotals = null;
		return Promise.all([ this.fetch(), L.resolveDefault(uci.load('ntmobile'), null) ]);
	},

	/** status and peers, or the reason there are none: {status, peers} or {failure}. */
	fetch: function() {
		return Promise.all([ callStatus(), callPeers() ]).then(function(r) {
			if (typeof r[0] === 'number')
				return { failure: 'error', message: _('The daemon answered with ubus status %d.').format(r[0]) };
			return { status: r[0], peers: r[1] };
		}, function(err) {
			const msg = String(err && err.message || err);
			if (/Object not found/.test(msg))
				return { failure: 'stopped' };
			if (/Access denied/.test(msg))
				return { failure: 'denied' };
			return { failure: 'error', message: msg };
		});
	},

	notice: function(data) {
		const enabled = uci.get('ntmobile', 'main', 'enabled');
		if (data.failure === 'stopped')
			return [ 'warning', E('strong', {}, _('The NTMobile daemon is not running.')), ' ',
				enabled === '0' ? _('It is disabled: enable it under Settings and save.')
				                : _('Start it with /etc/init.d/ntmobile start, or look for the reason in the system log (an invalid setting keeps it from starting).') ];
		if (data.failure === 'denied')
			return [ 'warning', E('strong', {}, _('You may not read the NTMobile status.')) ];
		if (data.failure === 'error')
			return [ 'warning', E('strong', {}, _('The NTMobile daemon does not answer.')), ' ', data.message ];
		const st = data.status;
		if (st.state !== 'ready')
			return [ 'notice', E('strong', {}, _('Not registered yet (%s).').format(st.state)), ' ',
				st.error ? _('Last error: %s').format(st.error) : _('The daemon is logging in and registering; this page updates by itself.') ];
		return null;
	},

	/** Rates per peer since the last poll, for the chart. */
	sample: function(data) {
		if (!data.peers)
			return;
		const now = data.status.now || Date.now();
		const totals = {};
		data.peers.forEach(function(p) { totals[p.node] = (p.txBytes || 0) + (p.rxBytes || 0); });
		if (this.lastTotals) {
			const dt = Math.max(1, now - this.lastTotals.t) / 1000;
			const rates = {};
			for (const n in totals)
				if (n in this.lastTotals.totals)
					rates[n] = Math.max(0, totals[n] - this.lastTotals.totals[n]) / dt;
			this.samples.push({ t: now, rates: rates });
			if (this.samples.length > CHART_SAMPLES)
				this.samples.shift();
		}
		this.lastTotals = { t: now, totals: totals };
	},

	registration: function(st) {
		const own = (st.registered || []).filter(function(r) { return r.name === st.name; })[0] || {};
		const stateText = {
			starting: _('starting'), login: _('logging in at the AS'), registering: _('registering at the DC'),
			ready: _('registered'), stopping: _('stopping')
		}[st.state] || st.state;
		return facts('ntm-registration', [
			[ 'name', _('Name'), st.name ],
			[ 'state', _('State'), stateText ],
			[ 'vip4', _('Virtual IPv4 address (VIP)'), own.vip4 || '-' ],
			[ 'vip6', _('Virtual IPv6 address (VIP)'), own.vip6 || '-' ],
			[ 'since', _('Registered since'), own.since ? when(own.since, st.now) : '-' ],
			[ 'dc', _('Direction Coordinator (DC)'), st.dc || '-' ],
			[ 'port', _('UDP port'), st.port != null ? String(st.port) : '-' ],
			[ 'key', _('Session key expires'), st.keyExpiresAt ? new Date(st.keyExpiresAt).toLocaleString() : '-' ]
		]);
	},

	uplink: function(st) {
		const up = st.uplink || {};
		const configured = L.toArray(uci.get('ntmobile', 'main', 'uplink'));
		const list = (up.recentHandovers || (up.lastHandover ? [ up.lastHandover ] : [])).slice().reverse();
		return E('div', {}, [
			facts('ntm-uplink', [
				[ 'address', _('Uplink address'), up.address || _('none (no route to the DC)') ],
				[ 'observed', _('Seen by the DC as'), up.observedByDc || '-' ],
				[ 'uplinks', _('Uplinks allowed'), configured.length ? configured.join(', ') : _('any (the routing table decides)') ],
				[ 'handovers', _('Handovers since start'), String(up.handovers || 0) ]
			]),
			E('h4', {}, _('Last handovers')),
			table('ntm-handovers', [ _('When'), _('Reason'), _('From → to'), _('Took'), _('Registered again'), _('Tunnels') ],
				list.map(function(h) {
					return {
						attrs: { 'data-at': h.at },
						cells: [
							when(h.at, st.now), h.reason, '%s → %s'.format(h.from || '-', h.to || '-'), '%d ms'.format(h.ms),
							h.registered ? _('yes') : _('no'),
							(h.tunnels || []).length ? h.tunnels.map(function(t) { return '%s: %s'.format(t.node, t.result); }).join(', ') : _('none')
						]
					};
				}), _('No handover since the daemon started.'))
		]);
	},

	peerTable: function(st, peers) {
		return table('ntm-peers', [ _('Peer'), _('Names'), _('Path'), _('Endpoint'), _('Sent'), _('Received'), _('Last activity'), _('Rekeys') ],
			peers.map(function(p) {
				const k = pathKind(p.route);
				const names = Object.keys(p.names || {}).map(function(n) {
					const v = p.names[n];
					return E('div', {}, '%s (%s)'.format(n, [ v.vip4, v.vip6 ].filter(Boolean).join(', ')));
				});
				return {
					attrs: { 'data-node': p.node, 'data-kind': k.kind },
					cells: [
						E('strong', {}, p.node), names,
						E('span', {}, [ E('span', { 'class': 'label ntm-kind', 'data-kind': k.kind }, k.kind), k.detail ? ' ' + k.detail : '' ]),
						E('code', { 'class': 'ntm-endpoint' }, p.path || '-'),
						'%s (%d %s)'.format(bytes(p.txBytes), p.txPackets || 0, _('pkts')),
						'%s (%d %s)'.format(bytes(p.rxBytes), p.rxPackets || 0, _('pkts')),
						when(Math.max(p.lastTx || 0, p.lastRx || 0), st.now),
						String(p.rekeys || 0)
					]
				};
			}), _('No tunnels: a LAN host opens one by looking up an NTMobile name.'));
	},

	published: function(st) {
		const sections = uci.sections('ntmobile', 'publish');
		const registered = {};
		(st.registered || []).forEach(function(r) { registered[r.name] = r; });
		const names = sections.map(function(s) { return s.name; }).filter(Boolean);
		Object.keys(registered).forEach(function(n) { if (n !== st.name && names.indexOf(n) < 0) names.push(n); });
		return table('ntm-published', [ _('Name'), _('LAN host'), _('VIPv4'), _('VIPv6'), _('Registered') ],
			names.map(function(n) {
				const s = sections.filter(function(x) { return x.name === n; })[0] || {};
				const r = registered[n];
				return {
					attrs: { 'data-name': n },
					cells: [ n, [ s.ip, s.ip6, s.mac ].filter(Boolean).join(', ') || '-', r && r.vip4 || '-', r && r.vip6 || '-',
						r ? _('yes') : _('no') ]
				};
			}), _('No LAN host is published: add one under Settings.'));
	},

	/** The counters that are not zero; the others folded away. */
	drops: function(st) {
		const c = st.counters || {};
		const rows = DROP_COUNTERS.map(function(d) {
			const v = (c[d[0]] || {})[d[1]] || 0;
			return { value: v, attrs: { 'data-counter': d[1] }, cells: [ d[2], E('strong', {}, String(v)), E('code', {}, d[1]) ] };
		});
		const titles = [ _('What'), _('Count'), _('Counter') ];
		const zero = rows.filter(function(r) { return !r.value; });
		return E('div', {}, [
			table('ntm-drops', titles, rows.filter(function(r) { return r.value; }), _('Nothing dropped, nothing failed.')),
			zero.length ? E('details', { 'style': 'margin-top:.5em' }, [
				E('summary', {}, _('%d more counters at zero').format(zero.length)),
				table('ntm-drops-zero', titles, zero, '')
			]) : ''
		]);
	},

	update: function(data) {
		const notice = this.notice(data);
		const box = this.page.querySelector('#ntm-notice');
		box.className = notice ? 'alert-message ' + notice[0] : '';
		box.setAttribute('data-state', data.failure || data.status.state);
		dom.content(box, notice ? notice.slice(1) : '');
		const parts = this.page.querySelector('#ntm-parts');
		parts.style.display = data.status ? '' : 'none';
		if (!data.status)
			return;
		this.sample(data);
		const st = data.status;
		dom.content(this.page.querySelector('#ntm-registration-box'), this.registration(st));
		dom.content(this.page.querySelector('#ntm-uplink-box'), this.uplink(st));
		dom.content(this.page.querySelector('#ntm-peers-box'), this.peerTable(st, data.peers));
		dom.content(this.page.querySelector('#ntm-chart'), chart(this.samples, (st.uplink || {}).recentHandovers || [], data.peers));
		dom.content(this.page.querySelector('#ntm-published-box'), this.published(st));
		dom.content(this.page.querySelector('#ntm-drops-box'), this.drops(st));
	},

	render: function(loaded) {
		const section = function(title, id, description) {
			return E('div', { 'class': 'cbi-section' }, [
				E('h3', {}, title),
				description ? E('div', { 'class': 'cbi-section-descr' }, description) : '',
				E('div', { 'id': id })
			]);
		};
		const page = E('div', { 'class': 'cbi-map', 'id': 'ntm-status' }, [
			E('h2', {}, _('NTMobile')),
			E('div', { 'class': 'cbi-map-descr' }, _('Stable virtual addresses for the LAN, reachable by name through any NAT, end-to-end encrypted; sessions survive a change of uplink.')),
			E('div', { 'id': 'ntm-notice' }),
			E('div', { 'id': 'ntm-parts' }, [
				section(_('Registration'), 'ntm-registration-box'),
				section(_('Uplink'), 'ntm-uplink-box'),
				section(_('Peers'), 'ntm-peers-box', _('Every tunnel, the path it takes (direct, relayed through a Relay Server, or through a gateway) and where the peer is now.')),
				section(_('Traffic per peer'), 'ntm-chart'),
				section(_('Published LAN hosts'), 'ntm-published-box'),
				section(_('Drops and failures'), 'ntm-drops-box', _('Counted since the daemon started; a growing bold number points at the problem.'))
			])
		]);
		this.page = page;
		this.update(loaded[0]);
		poll.add(L.bind(function() {
			return this.fetch().then(L.bind(this.update, this));
		}, this), POLL_SECONDS);
		return page;
	},

	handleSaveApply: null,
	handleSave: null,
	handleReset: null
});
