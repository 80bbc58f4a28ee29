//! Which hosts the data plane may send requests to (the SSRF guard).
//!
//! Subscriber URIs, dead-letter sinks and endpoint URLs are requests wsbridge
//! makes on its users' behalf. A [`DestinationPolicy`] says which of them are
//! allowed. It is checked twice: by the controller on the literal host of a
//! resolved URI (a Subscription pointing at a denied host gets `Ready=False`,
//! reason `DestinationDenied`), and by the data plane at connect time on
//! every *resolved* address, so a name that resolves to a denied address is
//! refused as well (DNS cannot be used to get around the list).
//!
//! Rules, first match wins:
//! 1. an entry of `deny` (`--destination-deny`) matches: denied;
//! 2. an entry of `allow` (`--destination-allow`) matches: allowed (this
//!    lifts the built-in denials for that entry);
//! 3. a built-in denial matches: link-local `169.254.0.0/16` and `fe80::/10`
//!    (unless `allow_link_local`), and always the cloud metadata addresses
//!    `169.254.169.254`, `fd00:ec2::254` and `metadata.google.internal`;
//! 4. otherwise allowed when `allow` is empty, denied when it is not (a
//!    non-empty allow list is exclusive).
//!
//! Pure values, plus [`resolve_allowed`]: the one resolver both the delivery
//! client's connector and the endpoint client connect through.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::str::FromStr;

use ipnet::IpNet;

/// An IP address as the policy compares it: an IPv6 address that carries an
/// IPv4 address (IPv4-mapped `::ffff:a.b.c.d`, or the NAT64 well-known prefix
/// `64:ff9b::/96` of RFC 6052) is that IPv4 address, so that neither form gets
/// around an IPv4 rule such as the metadata address.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None if v6.segments()[..6] == [0x64, 0xff9b, 0, 0, 0, 0] => {
                let [.., a, b, c, d] = v6.octets();
                IpAddr::V4(Ipv4Addr::new(a, b, c, d))
            }
            None => ip,
        },
        v4 => v4,
    }
}

/// A network of a rule, from CIDR notation (`10.0.0.0/8`, `fd00::/8`) or a
/// bare address (a `/32` or `/128`); host bits are cleared, and an address
/// in IPv6 form that carries an IPv4 address is taken as that address.
fn parse_net(s: &str) -> Result<IpNet, String> {
    let (addr, prefix) = match s.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (s, None),
    };
    let addr: IpAddr = addr
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .map_err(|_| format!("{s:?} is not an IP address or CIDR"))?;
    let mut prefix_len = match prefix {
        None => IpNet::from(addr).prefix_len(),
        Some(p) => p
            .parse::<u8>()
            .map_err(|_| format!("{s:?}: the prefix is not a number"))?,
    };
    let mut net_addr = addr;
    if canonical(addr) != addr && prefix_len >= 96 {
        // ::ffff:10.0.0.0/104 is 10.0.0.0/8.
        net_addr = canonical(addr);
        prefix_len -= 96;
    }
    IpNet::new(net_addr, prefix_len)
        .map(|net| net.trunc())
        .map_err(|_| {
            format!(
                "{s:?}: prefix must be 0..={}",
                IpNet::from(net_addr).max_prefix_len()
            )
        })
}

/// One entry of an allow or deny list: a network, or a host name (`a.b`
/// matches exactly that name; `.b` matches every name under `b`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostRule {
    /// Addresses in a network.
    Net(IpNet),
    /// A DNS name (lower case, no trailing dot), or a suffix when it starts with `.`.
    Name(String),
}

impl HostRule {
    fn matches_ip(&self, ip: IpAddr) -> bool {
        // Callers pass canonical addresses.
        matches!(self, HostRule::Net(n) if n.contains(&ip))
    }

    fn matches_name(&self, name: &str) -> bool {
        match self {
            HostRule::Name(rule) if rule.starts_with('.') => {
                name.ends_with(rule.as_str()) || name == &rule[1..]
            }
            HostRule::Name(rule) => name == rule,
            HostRule::Net(_) => false,
        }
    }
}

impl FromStr for HostRule {
    type Err = String;

    /// `10.0.0.0/8`, `169.254.169.254`, `fd00:ec2::254`, `metadata.internal`, `.internal`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.is_empty() {
            return Err("empty destination rule".into());
        }
        let first = s.trim_start_matches('[');
        if s.contains('/')
            || first.parse::<IpAddr>().is_ok()
            || first.trim_end_matches(']').parse::<IpAddr>().is_ok()
        {
            return parse_net(s).map(HostRule::Net);
        }
        let name = normalize_name(s);
        let valid = name
            .trim_start_matches('.')
            .split('.')
            .all(|label| !label.is_empty() && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
        if !valid {
            return Err(format!("{s:?} is neither a CIDR, an IP address nor a host name"));
        }
        Ok(HostRule::Name(name))
    }
}

impl fmt::Display for HostRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostRule::Net(n) => n.fmt(f),
            HostRule::Name(n) => f.write_str(n),
        }
    }
}

fn normalize_name(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// Why a destination was refused (no secret in it: hosts and addresses only).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("destination {target} is denied ({rule}); see --destination-allow/--destination-deny")]
pub struct DestinationDenied {
    /// The host or address that was refused.
    pub target: String,
    /// The rule that refused it (`deny 10.0.0.0/8`, `link-local`, ...).
    pub rule: String,
}

/// The allow/deny policy for outbound destinations. The default denies
/// link-local addresses and the cloud metadata endpoints.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DestinationPolicy {
    /// Always refused (checked first).
    pub deny: Vec<HostRule>,
    /// Allowed even when a built-in denial matches; when non-empty, nothing
    /// else is allowed.
    pub allow: Vec<HostRule>,
    /// Lift the built-in link-local denial (the metadata addresses stay denied).
    pub allow_link_local: bool,
}

/// The cloud metadata endpoints, always denied unless explicitly allowed.
pub const METADATA: [&str; 3] = [
    "169.254.169.254/32",
    "fd00:ec2::254/128",
    "metadata.google.internal",
];
/// Link-local networks, denied unless `allow_link_local`.
pub const LINK_LOCAL: [&str; 2] = ["169.254.0.0/16", "fe80::/10"];

fn builtin(list: &[&str]) -> Vec<HostRule> {
    list.iter()
        .map(|s| s.parse().expect("built-in rules parse"))
        .collect()
}

impl DestinationPolicy {
    /// A policy from flag values (`--destination-deny`, `--destination-allow`).
    pub fn from_rules(deny: &[String], allow: &[String], allow_link_local: bool) -> Result<Self, String> {
        let parse = |v: &[String]| {
            v.iter()
                .map(|s| s.parse::<HostRule>())
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(Self {
            deny: parse(deny)?,
            allow: parse(allow)?,
            allow_link_local,
        })
    }

    /// Checks an address (what the connector is about to connect to).
    pub fn check_ip(&self, ip: IpAddr) -> Result<(), DestinationDenied> {
        let ip = canonical(ip);
        let denied = |rule: String| DestinationDenied {
            target: ip.to_string(),
            rule,
        };
        if let Some(r) = self.deny.iter().find(|r| r.matches_ip(ip)) {
            return Err(denied(format!("deny {r}")));
        }
        if self.allow.iter().any(|r| r.matches_ip(ip)) {
            return Ok(());
        }
        if builtin(&METADATA).iter().any(|r| r.matches_ip(ip)) {
            return Err(denied("cloud metadata address".into()));
        }
        if !self.allow_link_local && builtin(&LINK_LOCAL).iter().any(|r| r.matches_ip(ip)) {
            return Err(denied("link-local".into()));
        }
        if !self.allow.is_empty() {
            return Err(denied("not in the allow list".into()));
        }
        Ok(())
    }

    /// Checks a host as written in a URI: an IP literal is checked as an
    /// address; a name against the name rules only (its addresses are
    /// checked at connect time). With a non-empty allow list, a name passes
    /// here when an address rule might still allow what it resolves to.
    pub fn check_host(&self, host: &str) -> Result<(), DestinationDenied> {
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = bare.parse::<IpAddr>() {
            return self.check_ip(ip);
        }
        let name = normalize_name(bare);
        let denied = |rule: String| DestinationDenied {
            target: name.clone(),
            rule,
        };
        if let Some(r) = self.deny.iter().find(|r| r.matches_name(&name)) {
            return Err(denied(format!("deny {r}")));
        }
        if self.allow.iter().any(|r| r.matches_name(&name)) {
            return Ok(());
        }
        if builtin(&METADATA).iter().any(|r| r.matches_name(&name)) {
            return Err(denied("cloud metadata address".into()));
        }
        let any_net_allowed = self.allow.iter().any(|r| matches!(r, HostRule::Net(_)));
        if !self.allow.is_empty() && !any_net_allowed {
            return Err(denied("not in the allow list".into()));
        }
        Ok(())
    }

    /// Whether a name was explicitly allowed by a name rule (its resolved
    /// addresses are then still checked against `deny` and the built-ins,
    /// but not against an exclusive allow list of networks).
    pub fn name_allowed_explicitly(&self, host: &str) -> bool {
        let name = normalize_name(host.trim_start_matches('[').trim_end_matches(']'));
        self.allow.iter().any(|r| r.matches_name(&name))
    }

    /// Checks an address that `host` resolved to.
    pub fn check_resolved(&self, host: &str, ip: IpAddr) -> Result<(), DestinationDenied> {
        match self.check_ip(ip) {
            Err(e) if e.rule == "not in the allow list" && self.name_allowed_explicitly(host) => Ok(()),
            Err(mut e) => {
                e.target = format!("{host} ({})", canonical(ip));
                Err(e)
            }
            Ok(()) => Ok(()),
        }
    }

    /// The flag values that reproduce this policy (for the worker's
    /// environment, written by the controller).
    pub fn to_env(&self) -> Vec<(&'static str, String)> {
        let join = |v: &[HostRule]| v.iter().map(ToString::to_string).collect::<Vec<_>>().join(",");
        let mut out = Vec::new();
        if !self.deny.is_empty() {
            out.push((ENV_DENY, join(&self.deny)));
        }
        if !self.allow.is_empty() {
            out.push((ENV_ALLOW, join(&self.allow)));
        }
        if self.allow_link_local {
            out.push((ENV_ALLOW_LINK_LOCAL, "true".into()));
        }
        out
    }
}

/// Resolves `host` (a name or an IP literal) and returns the addresses the
/// policy allows, in resolver order. Fails with [`DestinationDenied`] (as the
/// `io::Error`'s inner error) when the host or every address is denied.
pub async fn resolve_allowed(
    policy: &DestinationPolicy,
    host: &str,
    port: u16,
) -> std::io::Result<Vec<std::net::SocketAddr>> {
    let denied = |d: DestinationDenied| std::io::Error::new(std::io::ErrorKind::PermissionDenied, d);
    policy.check_host(host).map_err(denied)?;
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let resolved: Vec<std::net::SocketAddr> = match bare.parse::<IpAddr>() {
        Ok(ip) => vec![std::net::SocketAddr::new(ip, port)],
        Err(_) => tokio::net::lookup_host((bare, port)).await?.collect(),
    };
    let mut first_denial = None;
    let allowed: Vec<_> = resolved
        .into_iter()
        .filter(|a| match policy.check_resolved(bare, a.ip()) {
            Ok(()) => true,
            Err(e) => {
                first_denial.get_or_insert(e);
                false
            }
        })
        .collect();
    match first_denial {
        Some(d) if allowed.is_empty() => Err(denied(d)),
        _ => Ok(allowed),
    }
}

/// Environment variable of `--destination-deny` (comma-separated).
pub const ENV_DENY: &str = "WSBRIDGE_DESTINATION_DENY";
/// Environment variable of `--destination-allow` (comma-separated).
pub const ENV_ALLOW: &str = "WSBRIDGE_DESTINATION_ALLOW";
/// Environment variable of `--allow-link-local`.
pub const ENV_ALLOW_LINK_LOCAL: &str = "WSBRIDGE_ALLOW_LINK_LOCAL";

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn policy(deny: &[&str], allow: &[&str]) -> DestinationPolicy {
        let v = |l: &[&str]| l.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        DestinationPolicy::from_rules(&v(deny), &v(allow), false).unwrap()
    }

    #[test]
    fn networks_parse_and_match() {
        let net = |s: &str| parse_net(s);
        let n = net("10.1.2.3/8").unwrap();
        assert_eq!(n.to_string(), "10.0.0.0/8");
        assert!(n.contains(&ip("10.200.0.1")));
        assert!(!n.contains(&ip("11.0.0.1")));
        assert_eq!(net("::ffff:10.0.0.0/104").unwrap().to_string(), "10.0.0.0/8");
        let v6 = net("fe80::/10").unwrap();
        assert!(v6.contains(&ip("fe80::1")));
        assert!(!v6.contains(&ip("fd00::1")));
        assert!(!v6.contains(&ip("10.0.0.1")));
        assert_eq!(net("127.0.0.2").unwrap().to_string(), "127.0.0.2/32");
        assert_eq!(net("[::1]").unwrap().to_string(), "::1/128");
        assert!(net("10.0.0.0/33").is_err());
        assert!(net("nonsense/8").is_err());
        assert_eq!(net("0.0.0.0/0").unwrap().to_string(), "0.0.0.0/0");
    }

    #[test]
    fn ipv6_forms_of_an_ipv4_address_are_that_address() {
        assert_eq!(canonical(ip("::ffff:10.0.0.1")), ip("10.0.0.1"));
        assert_eq!(canonical(ip("64:ff9b::a9fe:a9fe")), ip("169.254.169.254"));
        assert_eq!(canonical(ip("2001:db8::1")), ip("2001:db8::1"));
        let p = DestinationPolicy::default();
        for metadata in ["::ffff:169.254.169.254", "64:ff9b::169.254.169.254"] {
            assert!(
                p.check_ip(ip(metadata)).is_err(),
                "{metadata} is the metadata address"
            );
        }
        let denied = policy(&["10.0.0.0/8"], &[]);
        assert!(denied.check_ip(ip("64:ff9b::10.1.2.3")).is_err());
        assert!(denied.check_ip(ip("::ffff:10.1.2.3")).is_err());
    }

    #[test]
    fn rules_parse_names_and_networks() {
        assert_eq!(
            "Metadata.Internal.".parse::<HostRule>().unwrap(),
            HostRule::Name("metadata.internal".into())
        );
        assert!(matches!(
            "fd00:ec2::254".parse::<HostRule>().unwrap(),
            HostRule::Net(_)
        ));
        assert!(matches!("[::1]".parse::<HostRule>().unwrap(), HostRule::Net(_)));
        assert!("bad host!".parse::<HostRule>().is_err());
        assert!("".parse::<HostRule>().is_err());
    }

    #[test]
    fn default_denies_link_local_and_metadata_only() {
        let p = DestinationPolicy::default();
        for denied in [
            "169.254.169.254",
            "169.254.1.1",
            "fe80::1",
            "fd00:ec2::254",
            "::ffff:169.254.169.254",
        ] {
            assert!(p.check_ip(ip(denied)).is_err(), "{denied}");
        }
        for allowed in [
            "10.0.0.1",
            "127.0.0.1",
            "192.168.1.1",
            "8.8.8.8",
            "::1",
            "fd00::1",
        ] {
            assert!(p.check_ip(ip(allowed)).is_ok(), "{allowed}");
        }
        assert!(p.check_host("metadata.google.internal").is_err());
        assert!(p.check_host("METADATA.google.internal.").is_err());
        assert!(p.check_host("[fd00:ec2::254]").is_err());
        assert!(p.check_host("169.254.169.254").is_err());
        assert!(p.check_host("pricing.default.svc.cluster.local").is_ok());
        let e = p.check_host("169.254.169.254").unwrap_err();
        assert_eq!(e.rule, "cloud metadata address");
    }

    #[test]
    fn allow_link_local_keeps_metadata_denied() {
        let p = DestinationPolicy {
            allow_link_local: true,
            ..Default::default()
        };
        assert!(p.check_ip(ip("169.254.1.1")).is_ok());
        assert!(p.check_ip(ip("fe80::1")).is_ok());
        assert!(p.check_ip(ip("169.254.169.254")).is_err());
        assert!(p.check_host("metadata.google.internal").is_err());
    }

    #[test]
    fn deny_entries_win_and_names_match_suffixes() {
        let p = policy(&["127.0.0.2/32", ".corp.example", "admin.example"], &[]);
        assert!(p.check_ip(ip("127.0.0.2")).is_err());
        assert!(p.check_ip(ip("127.0.0.1")).is_ok());
        assert!(p.check_host("db.corp.example").is_err());
        assert!(p.check_host("corp.example").is_err());
        assert!(p.check_host("notcorp.example").is_ok());
        assert!(p.check_host("Admin.Example").is_err());
        assert!(p.check_host("sub.admin.example").is_ok());
        let e = p.check_host("127.0.0.2").unwrap_err();
        assert_eq!(e.rule, "deny 127.0.0.2/32");
        // Deny wins over allow.
        let p = policy(&["10.0.0.0/8"], &["10.1.0.0/16"]);
        assert!(p.check_ip(ip("10.1.0.1")).is_err());
    }

    #[test]
    fn allow_list_is_exclusive_and_lifts_builtins() {
        let p = policy(&[], &["10.0.0.0/8", "169.254.10.0/24", "hooks.example"]);
        assert!(p.check_ip(ip("10.2.3.4")).is_ok());
        assert!(
            p.check_ip(ip("169.254.10.1")).is_ok(),
            "explicitly allowed link-local"
        );
        assert!(p.check_ip(ip("169.254.169.254")).is_err());
        assert!(p.check_ip(ip("192.168.0.1")).is_err());
        assert!(p.check_host("hooks.example").is_ok());
        // A name may resolve into an allowed network: checked at connect time.
        assert!(p.check_host("svc.cluster.local").is_ok());
        assert!(p.check_resolved("svc.cluster.local", ip("10.0.0.9")).is_ok());
        assert!(p.check_resolved("svc.cluster.local", ip("192.168.0.9")).is_err());
        // An explicitly allowed name may resolve anywhere but to a denied address.
        assert!(p.check_resolved("hooks.example", ip("203.0.113.7")).is_ok());
        assert!(p.check_resolved("hooks.example", ip("169.254.169.254")).is_err());
        // Names only: anything else is refused up front.
        let p = policy(&[], &["hooks.example"]);
        assert!(p.check_host("other.example").is_err());
    }

    #[test]
    fn resolved_addresses_are_checked_like_literals() {
        let p = DestinationPolicy::default();
        let e = p
            .check_resolved("evil.example", ip("169.254.169.254"))
            .unwrap_err();
        assert_eq!(e.target, "evil.example (169.254.169.254)");
        assert!(p.check_resolved("localhost", ip("127.0.0.1")).is_ok());
    }
}
