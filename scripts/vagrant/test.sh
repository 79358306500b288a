#!/usr/bin/env bash
# make vagrant-test: the end-to-end suite across real VMs. Starts what the host needs
# (scripts/vagrant/host.sh), brings up the client and the three nodes from the local box
# (BATON_BOX=local, make vagrant-box), runs the checks below, prints `N passed, N failed`, and
# always tears down what it started: the VMs, their volumes and networks, the daemons. The last
# check's, streams', move's and drain's output, and diag.log (roles, each node's view of the active
# distributor, clocks, the client's neighbours), stay in build/vagrant/host/ for a look afterwards.
# Bounded: every step has a timeout; the whole run stops after BATON_VAGRANT_TIMEOUT seconds
# (default 1200).
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
state=$repo/build/vagrant/host
export VAGRANT_CHECKPOINT_DISABLE=1 BATON_BOX=local
limit=${BATON_VAGRANT_TIMEOUT:-1200}
passed=0
failed=0
log() { printf '%s %s\n' "$(date +%T)" "$*"; }

teardown() {
  log "teardown: vagrant destroy"
  (cd "$repo/vagrant" && timeout 300 vagrant destroy -f >/dev/null 2>&1) || log "teardown: vagrant destroy failed (see virsh list --all)"
  # The isolated segment and Vagrant's management network, if vagrant-libvirt left them.
  for net in baton vagrant-libvirt; do
    if virsh -c qemu:///system net-info "$net" >/dev/null 2>&1; then
      virsh -c qemu:///system net-destroy "$net" >/dev/null 2>&1 || true
      virsh -c qemu:///system net-undefine "$net" >/dev/null 2>&1 || true
    fi
  done
  # vagrant-libvirt's copy of the box in the storage pool (about 1 GB, one per box version it saw).
  for vol in $(virsh -c qemu:///system vol-list default 2>/dev/null | awk '$1 ~ /^baton-local_vagrant_box_image_/ { print $1 }'); do
    virsh -c qemu:///system vol-delete --pool default "$vol" >/dev/null 2>&1 || true
  done
  "$repo/scripts/vagrant/host.sh" down "$state" || true
}
# The whole run is bounded: past the limit, this shell is told to stop (the trap tears down).
( sleep "$limit"; log "vagrant-test: over ${limit} s, stopping"; kill -TERM $$ ) &
watchdog=$!
trap 'kill $watchdog 2>/dev/null || true; teardown' EXIT
# A signal ends the run through the EXIT trap too (bash runs it on exit, not on a fatal signal).
trap 'exit 143' TERM INT

eval "$("$repo/scripts/vagrant/host.sh" up "$state")"
export BATON_LIBVIRT_DRIVER
log "host ready: libvirt driver $BATON_LIBVIRT_DRIVER"

t0=$(date +%s)
log "vagrant up (client, n1, n2, n3)"
# Progress bars (carriage returns) left out of the log.
(cd "$repo/vagrant" && timeout $((limit - 240)) vagrant up --provider=libvirt 2>&1 | stdbuf -oL tr '\r' '\n' | grep --line-buffered -v 'Progress: ' ; exit "${PIPESTATUS[0]}") || { log "vagrant up failed"; exit 1; }
log "vagrant up: $(( $(date +%s) - t0 )) s"

# check <name> <vm> <command>: one check, run in a VM, passed when the command succeeds.
check() {
  local name=$1 vm=$2 cmd=$3
  if (cd "$repo/vagrant" && timeout 120 vagrant ssh "$vm" -c "$cmd" >"$state/check.log" 2>&1); then
    passed=$((passed + 1)); log "PASS  $name"
  else
    failed=$((failed + 1)); log "FAIL  $name"; sed 's/^/      /' "$state/check.log" | tail -20
  fi
}

DVIPA=192.168.203.10
CLIENTS=/opt/baton/examples/clients
api_of() { case $1 in n1) echo https://192.168.203.11:4702 ;; n2) echo https://192.168.203.12:4702 ;; n3) echo https://192.168.203.13:4702 ;; esac; }
# diag <when>: what keepalived and batond said about roles, each node's idea of the active
# distributor, the clocks, and the client's neighbour entry for the DVIPA, appended to diag.log.
# Never fails (a VM may be gone).
diag() {
  {
    echo "===== $(date +%T) $1"
    for n in n1 n2; do
      echo "--- $n keepalived"
      (cd "$repo/vagrant" && timeout 60 vagrant ssh "$n" -c "sudo journalctl -u baton-keepalived -o short-precise --no-pager | grep -E 'Entering|Received|Killed|died|realtime|expired|Stopped|Started' | tail -25" 2>&1) || true
    done
    for n in n1 n2 n3; do
      echo "--- $n batond (roles) and clock"
      (cd "$repo/vagrant" && timeout 60 vagrant ssh "$n" -c "date +%s.%N; sudo journalctl -u batond -o cat --no-pager | grep -E 'VRRP state|active distributor|standby distributor|standing by|moving the DVIPA|reconciled|split|MASTER' | tail -15 | cut -c1-400; BATON_API_TOKEN=$token timeout 20 batonctl status --api $(api_of $n) --ca-file /etc/baton/tls/ca.crt 2>&1 | head -3" 2>&1) || true
    done
    echo "--- client neighbours"
    (cd "$repo/vagrant" && timeout 60 vagrant ssh client -c "ip neigh show; date +%s.%N" 2>&1) || true
  } >>"$state/diag.log"
}
for n in n1 n2 n3; do
  check "batond ready on $n (the shipped unit, its capabilities)" "$n" "systemctl is-active batond && sudo journalctl -u batond -o cat | grep -q '\"msg\":\"batond ready\"'"
done
# keepalived on both distributors; with nopreempt, whichever was provisioned first holds the DVIPA
# (Vagrant provisions the VMs in parallel). If that is n2, the DVIPA goes to n1 the operator's
# way, with batonctl dvipa move (run on n2 against its own API, with the Vagrantfile's token).
holds() { (cd "$repo/vagrant" && timeout 60 vagrant ssh "$1" -c "ip -br address show dev baton0" 2>/dev/null) | grep -q "$DVIPA/32"; }
token=$(cat "$repo/vagrant/.vagrant/baton-api-token")
: >"$state/diag.log"
diag "after vagrant up"
if holds n2 && ! holds n1; then
  check "keepalived had made n2 MASTER: batonctl dvipa move gives n1 the DVIPA" n2 \
    "BATON_API_TOKEN=$token batonctl dvipa move $DVIPA n1 --api $(api_of n2) --ca-file /etc/baton/tls/ca.crt"
fi
check "keepalived: n1 MASTER, holds the DVIPA on its interface" n1 "systemctl is-active baton-keepalived && ip -br address show dev baton0 | grep -q '$DVIPA/32'"
check "keepalived: n2 BACKUP, no DVIPA on its interface" n2 "systemctl is-active baton-keepalived && ! ip -br address show dev baton0 | grep -q '$DVIPA/32'"
# Every batond names n1 as the active distributor (its announcements reached every node), within 60 s.
check "every node's batond follows keepalived: n1 is the active distributor on n1, n2 and n3" n1 \
  "for i in \$(seq 10); do ok=1; for a in $(api_of n1) $(api_of n2) $(api_of n3); do BATON_API_TOKEN=$token timeout 20 batonctl status --json --api \$a --ca-file /etc/baton/tls/ca.crt | python3 -c 'import json,sys; sys.exit(json.load(sys.stdin)[\"distribution\"][\"active\"] != \"n1\")' || ok=0; done; [ \$ok = 1 ] && exit 0; sleep 3; done; exit 1"
diag "after the role checks"
# keepalived's role changes so far on n1 and n2 (each "Entering … STATE" line): none may follow
# unasked until the distributor is destroyed on purpose.
role_changes() { (cd "$repo/vagrant" && timeout 60 vagrant ssh "$1" -c "sudo journalctl -u baton-keepalived -o cat --no-pager | grep -c 'Entering'" 2>/dev/null) | tr -dc 0-9; }
changes_n1=$(role_changes n1) changes_n2=$(role_changes n2)
check "7. n1 steers with native XDP on virtio-net (xdp, not xdpgeneric)" n1 "ip -d link show dev baton0 | grep -q 'prog/xdp '"

# The example applications, as docs/operations.md starts them: routers on both distributors,
# targets on n2 and n3 (a node never hands a connection to itself).
app() { # app <vm> <unit> <script> <args...>
  local vm=$1 unit=$2 script=$3; shift 3
  (cd "$repo/vagrant" && timeout 120 vagrant ssh "$vm" -c "sudo systemd-run --unit=$unit node /opt/baton/dist/examples/$script --agent /run/baton/$vm.sock --node $vm --control-port 4701 --control-secret /var/lib/baton/$vm.secret $*" >/dev/null 2>&1) || log "could not start $unit on $vm"
}
for r in n1 n2; do
  targets=$( [ "$r" = n2 ] && echo n3 || echo n2,n3 )
  app "$r" http-router http/router.js --dvipa "$DVIPA" --port 80 --targets "$targets"
  app "$r" line-router line/router.js --dvipa "$DVIPA" --port 7000 --targets "$targets"
done
for t in n2 n3; do
  # n3's HTTP target serves one connection at a time: a second one is refused and retried on n2.
  app "$t" http-target http/target.js --port 80 $( [ "$t" = n3 ] && echo --capacity 1 )
  app "$t" line-target line/target.js --port 7000
done
sleep 20 # registration: each application's first heartbeat, under emulation

check "1./4. curl: Digest challenge, handoff to n2 on port 80, two requests on one connection" client \
  "out=\$(curl -sv --digest -u alice:wonderland http://$DVIPA/ http://$DVIPA/again 2>&1); echo \"\$out\" | grep -c 'served by n2' | grep -qx 2 && echo \"\$out\" | grep -q 'Re-using existing connection'"
check "2./4. line client on port 7000: GET and PUT byte-exact, handed off to n2" client \
  "python3 $CLIENTS/line_client.py --host $DVIPA --user alice --expect-node n2 --get 100000 --put 100000 | grep -q '\"ok\": true'"
check "2. twenty connections at once, half to n2, half to n3, byte-exact" client \
  "python3 $CLIENTS/line_streams.py --host $DVIPA --connections 20 --users alice=n2,bob=n3 --get 16384 --put 16384 --seconds 5 --timeout 60 | tail -1 | grep -q '\"failed\": \[\]'"

check "3. a refusal retried elsewhere: n3 busy (capacity 1), bob's next connection refused there and served by n2" client \
  "curl -s --digest -u bob:builder 'http://$DVIPA/hold?ms=6000' >/tmp/slow.out & sleep 2; curl -s --digest -u bob:builder http://$DVIPA/ | grep -q 'hello bob, served by n2' && wait && grep -q 'served by n3' /tmp/slow.out"
check "3. transfer again: one connection served by n2, moved to n3, moved back to n2, byte-exact after each" client \
  "python3 $CLIENTS/line_client.py --host $DVIPA --user alice --expect-node n2 --move n3,n2 --get 100000 --put 100000 --timeout 60 | grep -q '\"moves_ok\": true'"

# 3. The operator's way: batonctl move (on n1, the distributor) takes one live connection n2 -> n3
# -> n2 while its client keeps exchanging on it (WHOAMI, GET and PUT every 0.2 s, byte-exact).
operator_moves() {
  (cd "$repo/vagrant" && timeout 240 vagrant ssh client -c "python3 $CLIENTS/line_client.py --host $DVIPA --user alice --expect-node n2 --probe-for 50 --probe-every 0.2 --timeout 60" >"$state/move.log" 2>&1) &
  local client=$! moved=true
  sleep 15 # the client's ssh session, login and handoff, under emulation
  (cd "$repo/vagrant" && timeout 150 vagrant ssh n1 -c "export BATON_API_TOKEN=$token BATON_API=$(api_of n1) BATON_CA_FILE=/etc/baton/tls/ca.crt
    id=\$(batonctl connections --state forward --node n2 --client 192.168.203.100 --json | python3 -c 'import json,sys; print(*[c[\"id\"] for c in json.load(sys.stdin)[\"connections\"] if c[\"id\"].endswith(\":7000\")])')
    [ \"\$(echo \$id | wc -w)\" = 1 ] || { echo \"expected one connection of the client to port 7000 on n2, found: \$id\"; exit 1; }
    batonctl move \$id n3 && sleep 5 && batonctl move \$id n2" >"$state/check.log" 2>&1) || moved=false
  if wait "$client" && $moved && python3 -c 'import json,sys; r=json.loads(open(sys.argv[1]).read().strip().splitlines()[-1]); sys.exit(not (r["ok"] and r["probe_nodes"] == ["n2","n3","n2"]))' "$state/move.log"; then
    passed=$((passed + 1)); log "PASS  3. batonctl move: one live connection n2 -> n3 -> n2, its client exchanging byte-exact throughout"
  else
    failed=$((failed + 1)); log "FAIL  3. batonctl move: one live connection n2 -> n3 -> n2"; { cat "$state/check.log"; tail -2 "$state/move.log"; } | cut -c1-300 | sed 's/^/      /'
  fi
}
operator_moves

# 5. batond restarted on the distributor while 50 handed-off connections stream.
stream_while() { # stream_while <name> <users> <seconds> <action...>: streams from the client while the action runs
  local name=$1 users=$2 seconds=$3; shift 3
  (cd "$repo/vagrant" && timeout $((seconds + 120)) vagrant ssh client -c "python3 $CLIENTS/line_streams.py --host $DVIPA --connections 50 --users $users --get 8192 --put 8192 --interval 0.5 --seconds $seconds --timeout 60" >"$state/streams.log" 2>&1) &
  local streams=$!
  sleep $((seconds / 3))
  local acted=true
  "$@" || { acted=false; log "$name: the action failed"; }
  if wait "$streams" && $acted && tail -1 "$state/streams.log" | grep -q '"failed": \[\]'; then
    passed=$((passed + 1)); log "PASS  $name"; log "      $(python3 "$repo/scripts/vagrant/stalls.py" "$state/streams.log")"
  else
    failed=$((failed + 1)); log "FAIL  $name"; tail -5 "$state/streams.log" | cut -c1-300 | sed 's/^/      /'
  fi
}
restart_batond() { (cd "$repo/vagrant" && timeout 120 vagrant ssh n1 -c 'sudo systemctl restart batond' >/dev/null 2>&1); }
stream_while "5. systemctl restart batond on the distributor: 50 streaming connections all continue" alice=n2,bob=n3 60 restart_batond
# 3. n3 drained while connections stream to it: each moved to n2 (n3 takes no new one afterwards).
drain_n3() { (cd "$repo/vagrant" && timeout 180 vagrant ssh n1 -c "BATON_API_TOKEN=$token batonctl drain n3 --api $(api_of n1) --ca-file /etc/baton/tls/ca.crt" >"$state/drain.log" 2>&1); }
stream_while "3. batonctl drain n3 while 50 connections stream to n2 and n3: all continue" alice=n2,bob=n3 60 drain_n3
check "no role change nobody asked for: keepalived kept n1 MASTER and n2 BACKUP through every check so far" n1 \
  "[ \$(sudo journalctl -u baton-keepalived -o cat --no-pager | grep -c 'Entering') = '$changes_n1' ]"
check "no role change nobody asked for (n2)" n2 \
  "[ \$(sudo journalctl -u baton-keepalived -o cat --no-pager | grep -c 'Entering') = '$changes_n2' ]"
# 6. The distributor VM destroyed: the backup takes over (n3 is draining now: new streams go to n2).
destroy_n1() { virsh -c qemu:///system destroy vagrant_n1 >/dev/null; }
stream_while "6. virsh destroy of the distributor: 50 streaming connections all continue through n2" alice=n2 60 destroy_n1

[ "$failed" -eq 0 ] || diag "at the end (a check failed)"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
