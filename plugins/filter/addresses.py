# Copyright: mlflow-ha developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Host addresses, derived one way everywhere: a role's override variable when the inventory sets it, else the
host's gathered default address. Documented in host_address.yml and group_addresses.yml beside this file."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible.errors import AnsibleFilterError

# Gathered facts that hold a host's default address, in the order they are tried.
FACTS = ("default_ipv4", "default_ipv6")
_NO_DEFAULT = object()


def _variable_names(variable):
    if variable is None:
        return []
    if isinstance(variable, str):
        return [variable]
    return [str(name) for name in variable]


def _host_vars(host, hostvars):
    if host not in hostvars:
        raise AnsibleFilterError("address: '%s' is not a host of the inventory" % host)
    return hostvars[host]


def _set(value):
    return value is not None and str(value).strip() != ""


def _lookup(host, hostvars, names):
    """The host's address: the first of the variables `names` set for it, else its gathered default address."""
    hvars = _host_vars(host, hostvars)
    for name in names:
        if name in hvars and _set(hvars[name]):
            return str(hvars[name]).strip()
    facts = hvars["ansible_facts"] if "ansible_facts" in hvars else None
    for fact in FACTS:
        found = facts.get(fact) if facts else None
        address = found.get("address") if found else None
        if _set(address):
            return str(address)
    return None


def _missing(host, names, caller):
    # The variable a user sets: the role's public one (published facts start with an underscore).
    public = [name for name in names if not name.startswith("_")]
    if public:
        fix = "set %s for %s in the inventory (host_vars), or gather its facts first" % (public[0], host)
        unset = "%s is not set for it and its" % " / ".join(names)
    else:
        fix = "gather its facts first"
        unset = "its"
    return AnsibleFilterError(
        "%s: no address is known for %s: %s facts hold no default address (%s); %s (site.yml's first play "
        "gathers every host's)." % (caller, host, unset, ", ".join("ansible_facts.%s.address" % f for f in FACTS), fix))


def host_address(host, hostvars, variable=None, default=_NO_DEFAULT):
    """The address other hosts reach `host` at: the variable (or the first of the variables) named by `variable`
    when set for it, else its gathered default IPv4 address, else its default IPv6 address."""
    names = _variable_names(variable)
    address = _lookup(str(host), hostvars, names)
    if address is None:
        if default is not _NO_DEFAULT:
            return default
        raise _missing(host, names, "host_address")
    return address


def group_addresses(hosts, hostvars, variable=None, skip_missing=False):
    """[{name, address}] for every host of `hosts` (e.g. groups['postgres']), in the order given."""
    if isinstance(hosts, str):
        raise AnsibleFilterError(
            "group_addresses: expects a list of host names such as groups['%s'], got the string '%s'" % (hosts, hosts))
    names = _variable_names(variable)
    members = []
    for host in hosts or []:
        address = _lookup(str(host), hostvars, names)
        if address is None:
            if skip_missing:
                continue
            raise _missing(host, names, "group_addresses")
        members.append({"name": str(host), "address": address})
    return members


class FilterModule:
    def filters(self):
        return {"host_address": host_address, "group_addresses": group_addresses}
