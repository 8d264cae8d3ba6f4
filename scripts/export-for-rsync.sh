#!/bin/sh
# Cron job: export each zone as an rbldnsd `combined` file for rbldnsd mirrors that pull it with rsync.
# `dnsbl export -o` writes a temp file beside the target and renames it over, so a mirror's rsync
# (or a local rbldnsd) never reads half a file. flock keeps two runs from overlapping.
#
#   */5 * * * *  dnsbl  /usr/local/bin/export-for-rsync.sh
#
# Mirrors then run:  rsync -t primary::dnsbl/bl.example.org.combined /var/lib/rbldnsd/
# and serve it as:   rbldnsd ... bl.example.org:combined:/var/lib/rbldnsd/bl.example.org.combined
set -eu
: "${DNSBL_DB:=/var/lib/dnsbl-server/dnsbl.sqlite}"
: "${EXPORT_DIR:=/var/lib/dnsbl-server/export}"
export DNSBL_DB
mkdir -p "$EXPORT_DIR"
exec 9>"$EXPORT_DIR/.lock"
flock -n 9 || exit 0   # the previous run is still going
for zone in $(dnsbl stats --json | python3 -c 'import json,sys; print(" ".join(z["zone"] for z in json.load(sys.stdin)))'); do
    dnsbl export --zone "$zone" --format combined -o "$EXPORT_DIR/$zone.combined"
done
