#!/bin/sh
# Demo set-up, run once by the `init` service: a DNS zone in PowerDNS, a
# hosted zone in moto, both registered as Meridian providers, then the
# demo policies. Idempotent: a second run finds everything in place.
# Anything else than success or "already there" (409) stops it, loudly.
#
# The addresses default to the compose services; the test suite runs this
# script against local servers by setting them
# (services/meridian/tests/deploy_demo.rs).
set -eu
M=${MERIDIAN_URL:-http://meridian-1:8080}
PDNS_URL=${PDNS_URL:-http://pdns:8081}
MOTO_URL=${MOTO_URL:-http://moto:5000}
SECRETS=${SECRETS:-/run/secrets}
POLICIES=${POLICIES:-/demo/policies}
PDNS=$PDNS_URL/api/v1/servers/localhost
key=$(cat "$SECRETS/pdns_api_key")
token=$(cat "$SECRETS/admin_token")
answer=$(mktemp)

# Meridian answers once migrations ran and its snapshot is loaded. Compose
# orders the start by health checks, but podman-compose before podman 4.6
# cannot: wait here either way (up to a minute).
tries=0
until curl -fsS -o /dev/null "$M/readyz"; do
  tries=$((tries + 1))
  [ "$tries" -lt 120 ] || { echo "meridian at $M not ready after 60 s" >&2; exit 1; }
  sleep 0.5
done

# call WHAT CURL-ARGS...: fails unless the answer is 2xx or 409.
call() {
  what=$1; shift
  code=$(curl -sS -o "$answer" -w '%{http_code}' "$@")
  case $code in
    2??|409) echo "$what: $code" ;;
    *) echo "$what: failed with $code" >&2; cat "$answer" >&2; echo >&2; exit 1 ;;
  esac
}

# PowerDNS says 409 when the zone exists.
call "pdns zone" -X POST "$PDNS/zones" -H "X-API-Key: $key" -H 'content-type: application/json' \
  -d '{"name": "example.com.", "kind": "Native", "nameservers": ["ns1.example.com."]}'

# moto checks no signature, but picks the service (Route53) from the
# credential scope of the Authorization header. The zone is looked up
# first, so a second run reuses it; the responses carry its id.
aws='Authorization: AWS4-HMAC-SHA256 Credential=demo/20260101/us-east-1/route53/aws4_request, SignedHeaders=host, Signature=0'
first_zone_id() { sed -n 's:.*<Id>/hostedzone/\([^<]*\)</Id>.*:\1:p' | head -n1; }
zone_id=$(curl -fsS -H "$aws" "$MOTO_URL/2013-04-01/hostedzonesbyname?dnsname=example.com." | first_zone_id)
if [ -z "$zone_id" ]; then
  zone_id=$(curl -fsS -X POST "$MOTO_URL/2013-04-01/hostedzone" -H "$aws" -H 'content-type: application/xml' \
    -d '<CreateHostedZoneRequest xmlns="https://route53.amazonaws.com/doc/2013-04-01/"><Name>example.com.</Name><CallerReference>meridian-demo</CallerReference></CreateHostedZoneRequest>' \
    | first_zone_id)
fi
[ -n "$zone_id" ] || { echo "moto gave no hosted zone id" >&2; exit 1; }

call "provider pdns-demo" -X POST "$M/api/v1/providers" -H "authorization: Bearer $token" \
  -H 'content-type: application/json' -d "{
  \"name\": \"pdns-demo\", \"kind\": \"pdns\", \"apiUrl\": \"$PDNS_URL\", \"zone\": \"example.com.\",
  \"apiKey\": {\"file\": \"$SECRETS/pdns_api_key\"}, \"useLua\": false}"
call "provider route53-demo" -X POST "$M/api/v1/providers" -H "authorization: Bearer $token" \
  -H 'content-type: application/json' -d "{
  \"name\": \"route53-demo\", \"kind\": \"route53\", \"hostedZoneId\": \"$zone_id\",
  \"endpointUrl\": \"$MOTO_URL\", \"region\": \"us-east-1\",
  \"accessKeyId\": {\"file\": \"$SECRETS/aws_access_key_id\"},
  \"secretAccessKey\": {\"file\": \"$SECRETS/aws_secret_access_key\"}}"

for f in "$POLICIES"/*.yaml; do
  call "policy $f" -X POST "$M/api/v1/policies" -H "authorization: Bearer $token" \
    -H 'content-type: application/yaml' --data-binary "@$f"
done
rm -f "$answer"
echo "demo ready: curl -s -H \"authorization: Bearer \$(cat deploy/demo/secrets/admin_token)\" 127.0.10.11:8080/api/v1/policies/shop/status"
