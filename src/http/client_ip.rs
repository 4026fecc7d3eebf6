//! Which address a request comes from, and whether it may call the webhook port.

use std::net::IpAddr;

use http::HeaderMap;
use ipnet::IpNet;

use crate::config::HttpSettings;

/// The client address: the TCP peer, or — when the peer is a trusted proxy and
/// `client_ip_header` is set — the right-most address in that header that is not itself a
/// trusted proxy (the left part of `X-Forwarded-For` is written by the client and proves nothing).
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, http: &HttpSettings) -> IpAddr {
    let peer = canonical(peer);
    let Some(name) = &http.client_ip_header else {
        return peer;
    };
    if !contains(&http.trusted_proxies, peer) {
        return peer;
    }
    let mut client = peer;
    for value in headers.get_all(name).iter().rev() {
        let Ok(text) = value.to_str() else {
            return client;
        };
        for part in text.rsplit(',') {
            let Some(ip) = parse_hop(part) else {
                return client;
            };
            client = ip;
            if !contains(&http.trusted_proxies, ip) {
                return ip;
            }
        }
    }
    client
}

/// Whether `ip` may call the webhook port.
pub fn allowed(ip: IpAddr, http: &HttpSettings) -> bool {
    http.allow_networks.is_empty() || contains(&http.allow_networks, ip)
}

/// Whether a connection from `peer` may be served at all, judged at accept before anything is
/// read: a peer inside `allow_networks`, or a trusted proxy when the client address comes from a
/// header (that header is judged per request, by [`allowed`]).
pub fn admitted(peer: IpAddr, http: &HttpSettings) -> bool {
    let peer = canonical(peer);
    allowed(peer, http) || (http.client_ip_header.is_some() && contains(&http.trusted_proxies, peer))
}

fn contains(nets: &[IpNet], ip: IpAddr) -> bool {
    nets.iter().any(|n| n.contains(&ip))
}

/// IPv4-mapped IPv6 addresses (`::ffff:1.2.3.4`, as dual-stack sockets report them) become IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

fn parse_hop(part: &str) -> Option<IpAddr> {
    let part = part.trim();
    // `1.2.3.4`, `1.2.3.4:5678`, `2001:db8::1`, `[2001:db8::1]:443`
    if let Ok(ip) = part.parse::<IpAddr>() {
        return Some(canonical(ip));
    }
    if let Ok(sock) = part.parse::<std::net::SocketAddr>() {
        return Some(canonical(sock.ip()));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_network;

    fn settings(header: Option<&str>, proxies: &[&str], allow: &[&str]) -> HttpSettings {
        HttpSettings {
            header_read_timeout: std::time::Duration::from_secs(1),
            body_read_timeout: std::time::Duration::from_secs(1),
            max_concurrent_requests: 1,
            max_header_bytes: 8192,
            max_buffered_bytes: 1 << 20,
            max_connections: 1,
            tls: None,
            allow_networks: allow.iter().map(|n| parse_network(n).unwrap()).collect(),
            client_ip_header: header.map(|h| http::HeaderName::from_bytes(h.as_bytes()).unwrap()),
            trusted_proxies: proxies.iter().map(|n| parse_network(n).unwrap()).collect(),
        }
    }

    fn headers(xff: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in xff {
            h.append("x-forwarded-for", v.parse().unwrap());
        }
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn without_a_header_setting_the_peer_is_the_client() {
        let s = settings(None, &[], &[]);
        assert_eq!(client_ip(ip("10.0.0.5"), &headers(&["1.2.3.4"]), &s), ip("10.0.0.5"));
    }

    #[test]
    fn the_header_is_read_only_from_trusted_proxies() {
        let s = settings(Some("x-forwarded-for"), &["10.0.0.0/8"], &[]);
        assert_eq!(
            client_ip(ip("10.1.1.1"), &headers(&["3.18.12.63"]), &s),
            ip("3.18.12.63")
        );
        assert_eq!(
            client_ip(ip("192.0.2.9"), &headers(&["3.18.12.63"]), &s),
            ip("192.0.2.9")
        );
    }

    #[test]
    fn spoofed_left_entries_are_ignored() {
        let s = settings(Some("x-forwarded-for"), &["10.0.0.0/8"], &[]);
        let h = headers(&["3.18.12.63, 198.51.100.7, 10.2.2.2"]);
        assert_eq!(client_ip(ip("10.1.1.1"), &h, &s), ip("198.51.100.7"));
        let h = headers(&["3.18.12.63", "198.51.100.7:4431"]);
        assert_eq!(client_ip(ip("10.1.1.1"), &h, &s), ip("198.51.100.7"));
        let h = headers(&["garbage, 198.51.100.8"]);
        assert_eq!(client_ip(ip("10.1.1.1"), &h, &s), ip("198.51.100.8"));
    }

    #[test]
    fn allow_list_and_mapped_addresses() {
        let s = settings(None, &[], &["3.18.12.63", "54.187.0.0/16"]);
        assert!(allowed(ip("3.18.12.63"), &s));
        assert!(allowed(ip("54.187.205.235"), &s));
        assert!(!allowed(ip("3.18.12.64"), &s));
        let mapped = client_ip(ip("::ffff:3.18.12.63"), &HeaderMap::new(), &s);
        assert!(allowed(mapped, &s));
        assert!(allowed(ip("8.8.8.8"), &settings(None, &[], &[])));
    }

    #[test]
    fn at_accept_only_allowed_peers_and_trusted_proxies_get_in() {
        let direct = settings(None, &["10.0.0.0/8"], &["3.18.12.63"]);
        assert!(admitted(ip("3.18.12.63"), &direct));
        assert!(admitted(ip("::ffff:3.18.12.63"), &direct));
        assert!(
            !admitted(ip("10.1.1.1"), &direct),
            "proxies count only with a client_ip_header"
        );
        let proxied = settings(Some("x-forwarded-for"), &["10.0.0.0/8"], &["3.18.12.63"]);
        assert!(admitted(ip("10.1.1.1"), &proxied));
        assert!(!admitted(ip("192.0.2.1"), &proxied));
        assert!(admitted(ip("192.0.2.1"), &settings(None, &[], &[])));
    }
}
