'use strict';
'require view';
'require form';
'require rpc';
'require fs';
'require uci';
'require ui';

// /etc/config/ntmobile as a form. Every field is checked here with LuCI's datatypes and again by
// the daemon when the service reloads (router/uci-config.ts). The account password is never read
// back: it is written to /etc/ntmobile/password (mode 0600, option password_file), which only the
// write grant may write and nobody may read through LuCI, so read-only users see no secret.
// Saving applies through UCI; procd's reload trigger then reloads the service.

const PASSWORD_FILE = '/etc/ntmobile/password';

const callLeases = rpc.declare({
	object: 'luci-rpc',
	method: 'getDHCPLeases',
	params: [ 'family' ],
	expect: { dhcp_leases: [] }
});

function validateUrl(schemes, section_id, value) {
	if (value == null || value === '')
		return true;
	const m = /^([a-z]+):\/\/([^\/\s:]+|\[[0-9a-fA-F:.]+\])(:\d{1,5})?(\/\S*)?$/.exec(value);
	if (!m || schemes.indexOf(m[1]) < 0)
		return _('Expecting a URL starting with %s').format(schemes.map(function(s) { return s + '://'; }).join(_(' or ')));
	return true;
}

function validateEmail(section_id, value) {
	if (value == null || value === '')
		return true;
	return /^[^\s@]+@[^\s@]+\.[^\s@]+$/.test(value) ? true : _('Expecting an e-mail address');
}

return view.extend({
	load: function() {
		return Promise.all([
			L.resolveDefault(callLeases(4), []),
			uci.load('ntmobile')
		]);
	},

	render: function(loaded) {
		const leases = loaded[0];
		let m, s, o;

		m = new form.Map('ntmobile', _('NTMobile settings'),
			_('The router\'s NTMobile account, its network and the LAN hosts it publishes. Saving reloads the service; published hosts, LAN, domains and the log level change without dropping a tunnel.'));

		s = m.section(form.NamedSection, 'main', 'ntmobile');
		s.addremove = false;
		s.tab('account', _('Account'));
		s.tab('network', _('Network'));
		s.tab('advanced', _('Advanced'));

		o = s.taboption('account', form.Flag, 'enabled', _('Enabled'), _('Start the daemon (at boot too).'));
		o.rmempty = false;

		o = s.taboption('account', form.Value, 'name', _('Router name'),
			_('This router\'s NTMobile name, as bound to the account at the AS, e.g. <code>router.example.net</code>.'));
		o.datatype = 'hostname';
		o.rmempty = false;

		o = s.taboption('account', form.Value, 'email', _('Account e-mail'));
		o.validate = validateEmail;
		o.rmempty = false;

		o = s.taboption('account', form.Value, '_password', _('Account password'),
			_('Stored in %s, readable by root only; leave empty to keep the current one.').format('<code>' + PASSWORD_FILE + '</code>'));
		o.password = true;
		o.placeholder = (uci.get('ntmobile', 'main', 'password_file') || uci.get('ntmobile', 'main', 'password')) ? _('(unchanged)') : _('not set');
		o.cfgvalue = function() { return ''; };
		o.remove = function() {};
		o.write = function(section_id, value) {
			return fs.write(PASSWORD_FILE, value + '\n', 384 /* 0600 */).then(function() {
				uci.set('ntmobile', section_id, 'password_file', PASSWORD_FILE);
				uci.unset('ntmobile', section_id, 'password');
			});
		};

		o = s.taboption('account', form.Value, 'as_url', _('Authentication Server (AS)'), _('Where the router logs in, e.g. <code>https://as.example.net:8443</code>.'));
		o.validate = L.bind(validateUrl, o, [ 'https' ]);
		o.rmempty = false;

		o = s.taboption('account', form.Value, 'as_ca', _('AS certificate authority'), _('PEM file of the CA that signed the AS\'s certificate.'));
		o.validate = function(section_id, value) {
			return (value == null || value === '' || /^\/\S+$/.test(value)) ? true : _('Expecting an absolute path');
		};
		o.placeholder = '/etc/ntmobile/ca.pem';

		o = s.taboption('network', form.Value, 'port', _('UDP port'), _('One port for control messages and tunnels; the package opens it on WAN.'));
		o.datatype = 'port';
		o.placeholder = '4500';

		o = s.taboption('network', form.ListValue, 'suite', _('Cipher suite'), _('For the tunnels this router opens. ChaCha20-Poly1305 is faster on CPUs without AES instructions.'));
		o.value('aes-gcm', _('AES-GCM'));
		o.value('chacha20-poly1305', _('ChaCha20-Poly1305'));
		o.default = 'aes-gcm';

		o = s.taboption('network', form.DynamicList, 'lan', _('LAN interfaces'), _('Logical interfaces whose hosts use the tunnels.'));
		o.datatype = 'uciname';
		o.placeholder = 'lan';

		o = s.taboption('network', form.DynamicList, 'uplink', _('Uplinks'), _('Logical interfaces NTMobile may use, most preferred first; none: the routing table decides.'));
		o.datatype = 'uciname';
		o.placeholder = 'wan';

		o = s.taboption('network', form.DynamicList, 'domain', _('NTMobile domains'), _('Zones the LAN resolves through NTMobile; default: the zone of the router name.'));
		o.datatype = 'hostname';

		o = s.taboption('network', form.DynamicList, 'via_relay', _('Reached through a Relay Server'), _('Domains of general hosts (without NTMobile) reached through a Relay Server as gateway.'));
		o.datatype = 'hostname';

		o = s.taboption('network', form.Flag, 'mqtt', _('MQTT mode'), _('Keep one MQTT session to the Notification Server instead of UDP keepalives (saves power and data behind a NAT).'));

		o = s.taboption('network', form.Value, 'mqtt_url', _('MQTT broker'), _('Default: the one the DC names.'));
		o.depends('mqtt', '1');
		o.validate = L.bind(validateUrl, o, [ 'mqtt', 'mqtts' ]);

		o = s.taboption('advanced', form.ListValue, 'log_level', _('Log level'));
		o.value('error', _('Errors'));
		o.value('warn', _('Warnings'));
		o.value('info', _('Information'));
		o.value('debug', _('Debug'));
		o.default = 'info';

		o = s.taboption('advanced', form.DynamicList, 'resolver', _('DNS servers for DC discovery'),
			_('Asked for the NS records that lead to the DC of the router name\'s zone; none: the system\'s.'));
		o.datatype = 'or(ipaddr,ip4addrport)';

		o = s.taboption('advanced', form.Value, 'dns_port', _('DNS hook port'), _('Where dnsmasq forwards the NTMobile domains (on 127.0.0.1).'));
		o.datatype = 'port';
		o.placeholder = '5353';

		o = s.taboption('advanced', form.Value, 'tun', _('Tunnel device'));
		o.datatype = 'netdevname';
		o.placeholder = 'ntm0';

		o = s.taboption('advanced', form.Value, 'mtu', _('Tunnel MTU'));
		o.datatype = 'range(1280,9000)';
		o.placeholder = '1400';

		s = m.section(form.GridSection, 'publish', _('Published LAN hosts'),
			_('A LAN host published under its own name gets its own VIPs and can be reached from other NTMobile routers. Pick it from the DHCP leases (its MAC address: the address follows the lease) or type its address.'));
		s.anonymous = true;
		s.addremove = true;
		s.sortable = false;
		s.nodescriptions = true;
		s.modaltitle = _('Published LAN host');

		o = s.option(form.Value, 'name', _('Name'), _('e.g. <code>camera.router.example.net</code>'));
		o.datatype = 'hostname';
		o.rmempty = false;

		o = s.option(form.Value, 'mac', _('MAC address'));
		o.datatype = 'macaddr';
		leases.forEach(function(l) {
			if (l.macaddr)
				o.value(l.macaddr.toLowerCase(), '%s (%s, %s)'.format(l.macaddr.toLowerCase(), l.hostname || '?', l.ipaddr || '?'));
		});
		o.onchange = function(ev, section_id, value) {
			// a lease picked: its host name under the router's name, unless a name is typed already
			const lease = leases.filter(function(l) { return (l.macaddr || '').toLowerCase() === value; })[0];
			const name = this.section.getUIElement(section_id, 'name');
			const router = uci.get('ntmobile', 'main', 'name');
			if (lease && lease.hostname && name && !name.getValue() && router) {
				name.setValue('%s.%s'.format(lease.hostname.toLowerCase(), router));
				name.triggerValidation();
			}
			// the address is optional now: clear its "required" mark
			const ip = this.section.getUIElement(section_id, 'ip');
			if (ip)
				ip.triggerValidation();
		};

		o = s.option(form.Value, 'ip', _('IPv4 address'));
		o.datatype = 'ip4addr("nomask")';
		leases.forEach(function(l) {
			if (l.ipaddr)
				o.value(l.ipaddr, '%s (%s)'.format(l.ipaddr, l.hostname || '?'));
		});
		o.validate = function(section_id, value) {
			const mac = this.section.formvalue(section_id, 'mac');
			const ip6 = this.section.formvalue(section_id, 'ip6');
			return (value || mac || ip6) ? true : _('Give a MAC address from the leases or an address');
		};
		o.textvalue = function(section_id) {
			return this.cfgvalue(section_id) || (uci.get('ntmobile', section_id, 'mac') ? E('em', {}, _('from the DHCP lease')) : '-');
		};

		o = s.option(form.Value, 'ip6', _('IPv6 address'));
		o.datatype = 'ip6addr("nomask")';
		o.modalonly = true;

		s = m.section(form.GridSection, 'dc', _('Direction Coordinators'),
			_('DC discovery: by default the DC of a zone is found through its NS records. A DC listed here is used instead for its zone.'));
		s.anonymous = true;
		s.addremove = true;
		s.sortable = false;

		o = s.option(form.Value, 'zone', _('Zone'));
		o.datatype = 'hostname';
		o.rmempty = false;

		o = s.option(form.Value, 'address', _('DC address'));
		o.datatype = 'ipaddr("nomask")';
		o.rmempty = false;

		return m.render();
	},

	// LuCI's own handlers let a refused save end as an unhandled rejection in the console, after
	// the form has shown why in its "Save error" dialog: here the refusal ends with that dialog.
	handleSave: function(ev) {
		return this.super('handleSave', [ ev ]).catch(function() {});
	},

	handleSaveApply: function(ev, mode) {
		return this.super('handleSave', [ ev ]).then(function() {
			ui.changes.apply(mode == '0');
		}, function() {});
	}
});
