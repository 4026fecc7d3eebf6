#!/usr/bin/env bash
# Test certificates for the local secured brokers (deploy/local/kafka.sh, rabbitmq.sh) and for the
# integration tests that connect to them. Made with openssl only; nothing is downloaded. Cached and
# idempotent: a second run only checks, and files are regenerated only when the set is incomplete,
# made by an older version of this script, or the server certificate expires within 30 days.
#
# Usage: deploy/local/certs.sh [dir]     prints the directory holding the files
#
# Directory: $1, else ${HOOKBRIDGE_CACHE:-$HOME/.cache/hookbridge}/certs. Files (PEM, keys PKCS#8,
# EC P-256, unencrypted; the .p12 files use the password in p12.password):
#   ca.pem, ca.key                 the test CA that signs everything below (except other-ca)
#   server.pem, server.key         the brokers' certificate: CN=localhost, SAN localhost, 127.0.0.1
#   server.p12                     the same as PKCS#12 (Kafka's keystore)
#   client.pem, client.key         a client certificate, CN=hookbridge-client
#   client-expired.pem/.key        CN=hookbridge-client, signed by the test CA, expired in 2020
#   other-ca.pem, other-ca.key     an unrelated CA
#   client-other-ca.pem/.key       CN=hookbridge-client, signed by the unrelated CA
set -euo pipefail

# Bump when the set of files or their content changes: the cache is then rebuilt.
VERSION=1
DIR="${1:-${HOOKBRIDGE_CACHE:-$HOME/.cache/hookbridge}/certs}"
P12_PASSWORD=hookbridge-test-keystore

say() { echo "certs.sh: $*" >&2; }

complete() {
  [[ -f "$DIR/.stamp" && "$(cat "$DIR/.stamp")" == "$VERSION" ]] || return 1
  local f
  for f in ca.pem server.pem server.key server.p12 client.pem client.key client-expired.pem \
    client-expired.key other-ca.pem client-other-ca.pem client-other-ca.key p12.password; do
    [[ -s "$DIR/$f" ]] || return 1
  done
  openssl x509 -checkend $((30 * 86400)) -noout -in "$DIR/server.pem" >/dev/null
}

if complete; then
  echo "$DIR"
  exit 0
fi

mkdir -p "$(dirname "$DIR")"
exec 7>"$DIR.lock"
flock -w 120 7 || { say "ERROR: timed out waiting for the lock on $DIR"; exit 1; }
if complete; then # made by another process while we waited
  echo "$DIR"
  exit 0
fi

tmp="$DIR.tmp.$$"
rm -rf "$tmp"
mkdir -p "$tmp"
trap 'rm -rf "$tmp"' EXIT
cd "$tmp"

key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }

# ca NAME CN: a self-signed CA.
ca() {
  key "$1.key"
  openssl req -x509 -new -key "$1.key" -sha256 -days 3650 -subj "/O=hookbridge tests/CN=$2" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -out "$1.pem"
}

# leaf NAME CN CA USAGE [SAN]: a certificate signed by CA, valid 825 days.
leaf() {
  local name=$1 cn=$2 ca=$3 usage=$4 san=${5:-}
  key "$name.key"
  openssl req -new -key "$name.key" -subj "/O=hookbridge tests/CN=$cn" -out "$name.csr"
  {
    echo "basicConstraints=CA:FALSE"
    echo "keyUsage=critical,digitalSignature,keyEncipherment"
    echo "extendedKeyUsage=$usage"
    [[ -n $san ]] && echo "subjectAltName=$san"
  } >"$name.ext"
  openssl x509 -req -in "$name.csr" -CA "$ca.pem" -CAkey "$ca.key" -CAcreateserial -sha256 \
    -days 825 -extfile "$name.ext" -out "$name.pem" 2>/dev/null
}

ca ca "hookbridge test CA"
ca other-ca "unrelated test CA"
leaf server localhost ca serverAuth "DNS:localhost,IP:127.0.0.1"
leaf client hookbridge-client ca clientAuth
leaf client-other-ca hookbridge-client other-ca clientAuth

# An expired certificate: `openssl x509` cannot back-date, `openssl ca` can.
key client-expired.key
openssl req -new -key client-expired.key -subj "/O=hookbridge tests/CN=hookbridge-client" -out client-expired.csr
: >index.txt
echo 1000 >serial
cat >ca.cnf <<'EOF'
[ca]
default_ca = test
[test]
database = index.txt
new_certs_dir = .
serial = serial
default_md = sha256
policy = any
[any]
commonName = supplied
organizationName = optional
[client]
basicConstraints = CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = clientAuth
EOF
openssl ca -batch -config ca.cnf -cert ca.pem -keyfile ca.key -in client-expired.csr \
  -startdate 20200101000000Z -enddate 20200201000000Z -extensions client -notext \
  -out client-expired.pem 2>/dev/null

echo "$P12_PASSWORD" >p12.password
openssl pkcs12 -export -in server.pem -inkey server.key -certfile ca.pem -name server \
  -passout "pass:$P12_PASSWORD" -out server.p12

rm -f ./*.csr ./*.ext ./*.srl index.txt* serial* ca.cnf 1000.pem
chmod 600 ./*.key
echo "$VERSION" >.stamp
cd /
rm -rf "$DIR"
mv "$tmp" "$DIR"
trap - EXIT
say "generated test certificates in $DIR"
echo "$DIR"
