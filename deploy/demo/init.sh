#!/bin/sh
# Demo set-up, run once by the `init` service: a DNS zone in PowerDNS, a
# hosted zone in moto, both registered as Meridian providers, then the
# demo policies. Idempotent: a second run finds everything in place.
set -eu
M=http://meridian-1:8080
PDNS=http://pdns:8081/api/v1/servers/localhost
key=$(cat /run/secrets/pdns_api_key)

curl -fsS -o /dev/null -X POST "$PDNS/zones" -H "X-API-Key: $key" -H 'content-type: application/json' \
  -d '{"name": "example.com.", "kind": "Native", "nameservers": ["ns1.example.com."]}' || true

# moto checks no signature; the response carries the new zone's id.
zone_id=$(curl -fsS -X POST http://moto:5000/2013-04-01/hostedzone -H 'content-type: application/xml' \
  -d '<CreateHostedZoneRequest xmlns="https://route53.amazonaws.com/doc/2013-04-01/"><Name>example.com.</Name><CallerReference>meridian-demo</CallerReference></CreateHostedZoneRequest>' \
  | sed -n 's:.*<Id>/hostedzone/\([^<]*\)</Id>.*:\1:p' | head -n1)

curl -fsS -o /dev/null -X POST "$M/api/v1/providers" -H 'content-type: application/json' -d '{
  "name": "pdns-demo", "kind": "pdns", "apiUrl": "http://pdns:8081", "zone": "example.com.",
  "apiKey": {"file": "/run/secrets/pdns_api_key"}, "useLua": false}' || true
curl -fsS -o /dev/null -X POST "$M/api/v1/providers" -H 'content-type: application/json' -d "{
  \"name\": \"route53-demo\", \"kind\": \"route53\", \"hostedZoneId\": \"$zone_id\",
  \"endpointUrl\": \"http://moto:5000\", \"region\": \"us-east-1\",
  \"accessKeyId\": {\"file\": \"/run/secrets/aws_access_key_id\"},
  \"secretAccessKey\": {\"file\": \"/run/secrets/aws_secret_access_key\"}}" || true

for f in /demo/policies/*.yaml; do
  curl -fsS -o /dev/null -X POST "$M/api/v1/policies" -H 'content-type: application/yaml' --data-binary "@$f" || true
done
echo "demo ready: curl -s $M/api/v1/policies/shop/status"
