'use strict';
'require view';
'require rpc';
'require ui';
'require dom';

// A ping over the tunnel: the daemon resolves the name as a LAN host's lookup would (a direction
// and a tunnel when there is none yet), pings the VIP from its own VIP, and the page shows the
// answer and the path the tunnel to that name takes.

const callPing = rpc.declare({ object: 'ntmobile', method: 'ping', params: [ 'name', 'count' ] });
const callPeers = rpc.declare({ object: 'ntmobile', method: 'peers', expect: { peers: [] } });

const NAME_RE = /^(?=.{1,253}$)([a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?)(\.[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?)*\.?$/;

function row(key, title, value) {
	return E('tr', { 'class': 'tr', 'data-key': key }, [
		E('td', { 'class': 'td left', 'width': '33%' }, title),
		E('td', { 'class': 'td left' }, value)
	]);
}

function failureText(err) {
	const msg = String(err && err.message || err);
	if (/Object not found/.test(msg))
		return _('The NTMobile daemon is not running.');
	if (/Access denied/.test(msg))
		return _('You may not run diagnostics.');
	return msg;
}

return view.extend({
	handlePing: function(ev) {
		const name = document.getElementById('ntm-ping-name').value.trim().toLowerCase();
		const count = +document.getElementById('ntm-ping-count').value;
		const out = document.getElementById('ntm-ping-result');
		if (!NAME_RE.test(name))
			return ui.addNotification(null, E('p', {}, _('Expecting a DNS name, e.g. camera.router.example.net')), 'warning');
		out.setAttribute('data-state', 'running');
		dom.content(out, E('p', { 'class': 'spinning' }, _('Pinging %s over the tunnel…').format(name)));
		return callPing(name, count).then(function(r) {
			if (typeof r === 'number') {
				out.setAttribute('data-state', 'failed');
				return dom.content(out, E('div', { 'class': 'alert-message warning' },
					_('No answer for %s: the name is unknown, its router is offline, or no tunnel could be made (see the system log).').format(name)));
			}
			return L.resolveDefault(callPeers(), []).then(function(peers) {
				const peer = peers.filter(function(p) { return p.names && name in p.names; })[0];
				const rtt = r.rttMs || [];
				out.setAttribute('data-state', r.received > 0 ? 'ok' : 'lost');
				dom.content(out, E('table', { 'class': 'table', 'id': 'ntm-ping-table' }, [
					row('name', _('Name'), r.name),
					row('vip', _('Answered VIP'), r.vip),
					row('setup', _('Name resolved and tunnel ready in'), '%d ms'.format(r.setupMs)),
					row('received', _('Replies'), '%d / %d'.format(r.received, r.sent)),
					row('rtt', _('Round-trip times'), rtt.length ? rtt.map(function(t) { return '%.1f ms'.format(t); }).join(', ') : '-'),
					row('path', _('Path'), peer ? peer.route : _('local (this router or one of its hosts)')),
					row('endpoint', _('Peer endpoint'), peer && peer.path ? E('code', {}, peer.path) : '-'),
					row('peer', _('Peer router'), peer ? peer.node : '-')
				]));
			});
		}, function(err) {
			out.setAttribute('data-state', 'failed');
			dom.content(out, E('div', { 'class': 'alert-message warning' }, failureText(err)));
		});
	},

	render: function() {
		const writable = L.hasViewPermission();
		return E('div', { 'class': 'cbi-map' }, [
			E('h2', {}, _('NTMobile diagnostics')),
			E('div', { 'class': 'cbi-map-descr' }, _('Ping a name over its tunnel: the answer shows the VIP, how long the name took to resolve (including the tunnel set-up) and the path the tunnel takes.')),
			E('div', { 'class': 'cbi-section cbi-section-node' }, [
				E('div', { 'class': 'cbi-value' }, [
					E('label', { 'class': 'cbi-value-title', 'for': 'ntm-ping-name' }, _('Name')),
					E('div', { 'class': 'cbi-value-field' }, E('input', { 'id': 'ntm-ping-name', 'type': 'text', 'class': 'cbi-input-text', 'placeholder': 'camera.router.example.net' }))
				]),
				E('div', { 'class': 'cbi-value' }, [
					E('label', { 'class': 'cbi-value-title', 'for': 'ntm-ping-count' }, _('Pings')),
					E('div', { 'class': 'cbi-value-field' }, E('select', { 'id': 'ntm-ping-count', 'class': 'cbi-input-select' },
						[ 1, 3, 5, 10 ].map(function(n) { return E('option', { 'value': n, 'selected': n === 3 ? '' : null }, String(n)); })))
				]),
				E('div', { 'class': 'cbi-value' }, [
					E('label', { 'class': 'cbi-value-title' }, ' '),
					E('div', { 'class': 'cbi-value-field' }, E('button', {
						'id': 'ntm-ping-button',
						'class': 'cbi-button cbi-button-action',
						'disabled': writable ? null : '',
						'title': writable ? null : _('Needs write access to NTMobile'),
						'click': ui.createHandlerFn(this, 'handlePing')
					}, _('Ping')))
				])
			]),
			E('div', { 'class': 'cbi-section', 'id': 'ntm-ping-result' })
		]);
	},

	handleSaveApply: null,
	handleSave: null,
	handleReset: null
});
