#!/usr/bin/env bash
# Open MPI's launch agent (plm_rsh_agent) for hosts made of network
# namespaces on this machine (tests/two_hosts.sh): called as ssh would be,
# "netns_agent.sh HOST COMMAND...", it runs COMMAND inside HOST's namespace
# and with HOST's name as the host name (a UTS namespace of its own), so that
# the ranks see two hosts that talk over TCP.
set -euo pipefail
host=$1
shift
map=${FSDP_NETNS_MAP:?FSDP_NETNS_MAP names the file of "ADDRESS NAMESPACE" lines}
namespace=$(awk -v h="$host" '$1 == h { print $2 }' "$map")
[ -n "$namespace" ] || { echo "netns_agent: no namespace for host $host in $map" >&2; exit 1; }
exec ip netns exec "$namespace" unshare --uts bash -c 'hostname "$0"; eval "$@"' "$namespace" "$@"
