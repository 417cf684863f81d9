#!/usr/bin/env bash
# fsdp-train on two hosts: two network namespaces on this machine, joined by
# a bridge, each with its own host name; Open MPI launches into them with
# tests/netns_agent.sh instead of ssh and its ranks talk over TCP only.
#   1. at world size 4 (2 ranks per host) the losses are the one-host run's;
#   2. a checkpoint saved across the two hosts is resumed across them, with
#      the uninterrupted run's losses.
# Needs root (ip netns, iproute2; exit 77, a skip, without it). Usage: two_hosts.sh MPIRUN FSDP_TRAIN WORK_DIR
set -euo pipefail
[ $# -eq 3 ] || { echo "usage: $0 MPIRUN FSDP_TRAIN WORK_DIR (got $# arguments)"; exit 2; }
mpirun=$1 train=$2 work=$3
here=$(cd "$(dirname "$0")" && pwd)
# Without root there are no namespaces to make: reported as skipped (77), never as passed.
[ "$(id -u)" -eq 0 ] || { echo "two_hosts: needs root for ip netns; skipped"; exit 77; }
rm -rf "$work" && mkdir -p "$work" && cd "$work"
fail() { echo "FAIL: $*"; exit 1; }
losses() { sed -n 's/^step \([0-9]*\)\/[0-9]*  loss \([0-9.]*\) .*/\1 \2/p' "$1"; }

# The two hosts: 10.77.<N>.11 and .12 on a bridge at .1, N from the process id
# so that concurrent runs do not collide; removed on exit.
net=$(( $$ % 200 + 20 ))
bridge=fsdpbr$net
cleanup() {
  for i in 1 2; do ip netns del "fsdp$net-host$i" 2>/dev/null || true; done
  ip link del "$bridge" 2>/dev/null || true
}
trap cleanup EXIT
ip link add "$bridge" type bridge || fail "cannot create a bridge (not root, or no CAP_NET_ADMIN)"
ip addr add "10.77.$net.1/24" dev "$bridge"
ip link set "$bridge" up
: > hosts.map
: > hostfile
for i in 1 2; do
  ns=fsdp$net-host$i
  ip netns add "$ns"
  ip link add "fsdp$net-v$i" type veth peer name eth0 netns "$ns"
  ip link set "fsdp$net-v$i" master "$bridge"
  ip link set "fsdp$net-v$i" up
  ip netns exec "$ns" ip addr add "10.77.$net.1$i/24" dev eth0
  ip netns exec "$ns" ip link set eth0 up
  ip netns exec "$ns" ip link set lo up
  echo "10.77.$net.1$i $ns" >> hosts.map
  echo "10.77.$net.1$i slots=2" >> hostfile
done
export FSDP_NETNS_MAP=$PWD/hosts.map
two_hosts=("$mpirun" --hostfile hostfile -np 4 --mca plm_rsh_agent "$here/netns_agent.sh"
           --mca oob_tcp_if_include "10.77.$net.0/24" --mca btl_tcp_if_include "10.77.$net.0/24"
           --mca btl tcp,self)
model=(--backend mpi --model dense --hidden 32 --layers 1 --heads 2 --intermediate 64
       --vocabulary 64 --seq-len 8 --batch 4 --log-interval 1 --steps 16)

"$mpirun" -np 4 "$train" "${model[@]}" --checkpoint-dir one > one.log
"${two_hosts[@]}" "$train" "${model[@]}" --stop-after 8 --checkpoint-dir two > two.log 2>&1 ||
  { cat two.log; fail "the two-host run failed"; }
grep -q "fsdp-train: 4 ranks on 2 hosts, backend mpi, rank 0 local 0/2 on fsdp$net-host1" two.log ||
  { cat two.log; fail "the ranks do not see two hosts"; }
"${two_hosts[@]}" "$train" "${model[@]}" --resume --checkpoint-dir two > resumed.log 2>&1 ||
  { cat resumed.log; fail "the two-host resume failed"; }
grep -q "resumed from two at step 8 (saved by 4 rank(s))" resumed.log || fail "no resume line"
# Same world size, same reduction order: the losses as printed.
diff <(losses one.log) <(losses two.log; losses resumed.log) ||
  fail "the two-host losses differ from the one-host run's"
echo "two hosts: all checks passed (TCP between network namespaces fsdp$net-host1 and -host2)"
