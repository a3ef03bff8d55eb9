//! Entities of the control plane and their JSON shapes (Tailscale's API v2
//! field names where Tailscale has the resource).

use serde::{Deserialize, Serialize};
use tally_proto::timefmt::format_nanos;

/// A user's role in a tailnet, as tailnet admins know them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Everything, including tailnets and owners.
    Owner,
    /// Everything in the tailnet but owners and tailnets.
    Admin,
    /// Network settings and keys; reads logs and flows.
    NetworkAdmin,
    /// Devices, users and keys; reads logs and flows.
    ItAdmin,
    /// Reads configuration and the audit log.
    BillingAdmin,
    /// Reads everything, changes nothing.
    Auditor,
    /// Sees devices only.
    Member,
}

/// Every role, most powerful first.
pub const ROLES: [Role; 7] = [
    Role::Owner,
    Role::Admin,
    Role::NetworkAdmin,
    Role::ItAdmin,
    Role::BillingAdmin,
    Role::Auditor,
    Role::Member,
];

/// Every permission, in the order of the matrix in ARCHITECTURE.md.
pub const PERMISSIONS: [Permission; 13] = [
    Permission::LogsRead,
    Permission::AlertsRead,
    Permission::AuditRead,
    Permission::ConfigRead,
    Permission::DevicesRead,
    Permission::SettingsWrite,
    Permission::AlertsWrite,
    Permission::RulesWrite,
    Permission::DevicesWrite,
    Permission::KeysWrite,
    Permission::UsersWrite,
    Permission::TailnetsWrite,
    Permission::ServerOperate,
];

/// What a route needs; see the matrix in ARCHITECTURE.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Permission {
    /// Read logs, collections and flows.
    LogsRead,
    /// Read alerts and detection rules.
    AlertsRead,
    /// Read the configuration audit log.
    AuditRead,
    /// Read settings, users, keys, tailnets.
    ConfigRead,
    /// Read devices.
    DevicesRead,
    /// Change tailnet settings, collections and adoptions.
    SettingsWrite,
    /// Acknowledge alerts.
    AlertsWrite,
    /// Add, change, enable, disable and delete detection rules.
    RulesWrite,
    /// Rename, tag and remove devices.
    DevicesWrite,
    /// Create and revoke keys.
    KeysWrite,
    /// Create users, change roles, delete users.
    UsersWrite,
    /// Create, rename and delete tailnets.
    TailnetsWrite,
    /// Operate the server: metrics, consumers (pause, resume). Only keys of
    /// the server's first tailnet (the operator's) have it.
    ServerOperate,
}

impl Permission {
    /// The name used in messages and docs (`logs:read`).
    pub fn name(self) -> &'static str {
        match self {
            Self::LogsRead => "logs:read",
            Self::AlertsRead => "alerts:read",
            Self::AuditRead => "audit:read",
            Self::ConfigRead => "config:read",
            Self::DevicesRead => "devices:read",
            Self::SettingsWrite => "settings:write",
            Self::AlertsWrite => "alerts:write",
            Self::RulesWrite => "rules:write",
            Self::DevicesWrite => "devices:write",
            Self::KeysWrite => "keys:write",
            Self::UsersWrite => "users:write",
            Self::TailnetsWrite => "tailnets:write",
            Self::ServerOperate => "server:operate",
        }
    }
}

impl Role {
    /// The API name (`network-admin`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Owner => "owner",
            Self::Admin => "admin",
            Self::NetworkAdmin => "network-admin",
            Self::ItAdmin => "it-admin",
            Self::BillingAdmin => "billing-admin",
            Self::Auditor => "auditor",
            Self::Member => "member",
        }
    }

    /// Parses an API name.
    pub fn parse(s: &str) -> Option<Self> {
        ROLES.into_iter().find(|r| r.name() == s)
    }

    /// Whether this role has `p` (the matrix in ARCHITECTURE.md).
    pub fn allows(self, p: Permission) -> bool {
        use Permission as P;
        use Role as R;
        match p {
            P::LogsRead | P::AlertsRead => matches!(
                self,
                R::Owner | R::Admin | R::NetworkAdmin | R::ItAdmin | R::Auditor
            ),
            P::AlertsWrite => matches!(self, R::Owner | R::Admin | R::NetworkAdmin | R::ItAdmin),
            P::RulesWrite => matches!(self, R::Owner | R::Admin),
            P::AuditRead | P::ConfigRead => self != R::Member,
            P::DevicesRead => true,
            P::SettingsWrite => matches!(self, R::Owner | R::Admin),
            P::DevicesWrite | P::UsersWrite => matches!(self, R::Owner | R::Admin | R::ItAdmin),
            P::KeysWrite => matches!(self, R::Owner | R::Admin | R::NetworkAdmin | R::ItAdmin),
            P::TailnetsWrite => self == R::Owner,
            P::ServerOperate => matches!(self, R::Owner | R::Admin),
        }
    }

    /// A permission of `other` that this role lacks, if any (the first in
    /// matrix order).
    pub fn lacks_of(self, other: Role) -> Option<Permission> {
        PERMISSIONS
            .into_iter()
            .find(|p| other.allows(*p) && !self.allows(*p))
    }

    /// The rank rule: whether `self` may manage a user of role `target`
    /// (grant or remove `target`, delete such a user, revoke such a user's
    /// keys). A role manages exactly the roles none of whose permissions it
    /// lacks, so no one can hand out or take over more than they hold:
    /// owners manage every role, admins every role but owner, it-admins
    /// it-admin, network-admin, billing-admin, auditor and member,
    /// network-admins network-admin, billing-admin, auditor and member.
    pub fn may_manage(self, target: Role) -> bool {
        self.lacks_of(target).is_none()
    }

    /// Whether `self` may create a key (API or auth) that acts for another
    /// user whose role is `target`: owners for any user, admins for users
    /// below admin (not owners, not other admins), no other role for
    /// anyone but itself. Such a key is valid only while this still holds
    /// for the creator's and the user's current roles.
    pub fn may_create_key_for(self, target: Role) -> bool {
        match self {
            Self::Owner => true,
            Self::Admin => !matches!(target, Self::Owner | Self::Admin),
            _ => false,
        }
    }

    /// The role with its indefinite article, for messages (`an it-admin`).
    pub fn with_article(self) -> String {
        let article = match self {
            Self::Owner | Self::Admin | Self::ItAdmin | Self::Auditor => "an",
            _ => "a",
        };
        format!("{article} {}", self.name())
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A tailnet.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Tailnet {
    /// Stable ID (`T…`).
    pub id: String,
    /// Name, unique on the server.
    pub name: String,
    /// Creation time (RFC 3339).
    pub created: String,
}

/// A user of a tailnet (Tailscale's user shape).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct User {
    /// Stable ID (`u…`).
    pub id: String,
    /// Display name.
    pub display_name: String,
    /// Login name (e-mail or handle).
    pub login_name: String,
    /// Tailnet ID.
    pub tailnet_id: String,
    /// Creation time (RFC 3339).
    pub created: String,
    /// `member` for people.
    #[serde(rename = "type")]
    pub user_type: String,
    /// Role name.
    pub role: Role,
    /// `active`.
    pub status: String,
}

/// Device capabilities of an auth key (Tailscale's shape).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeviceCreate {
    /// May register more than one device.
    #[serde(default)]
    pub reusable: bool,
    /// Devices are removed when they go away.
    #[serde(default)]
    pub ephemeral: bool,
    /// Devices need no approval.
    #[serde(default)]
    pub preauthorized: bool,
    /// Tags given to registered devices.
    #[serde(default)]
    pub tags: Vec<String>,
}

/// A key's metadata (never its secret, which is shown once at creation).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KeyInfo {
    /// Stable ID (`k…`).
    pub id: String,
    /// `api` or `auth`.
    pub key_type: String,
    /// What it is for.
    pub description: String,
    /// Creation time (RFC 3339).
    pub created: String,
    /// Expiry (RFC 3339), if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires: Option<String>,
    /// Revocation time (RFC 3339), if revoked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revoked: Option<String>,
    /// Whether it can be used now.
    pub invalid: bool,
    /// The user it acts for.
    pub user_id: String,
    /// Auth keys: what registered devices get.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<serde_json::Value>,
}

/// A node (device) of a tailnet's inventory (Tailscale's device shape).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Device {
    /// Stable ID (`n…`); also `nodeId`.
    pub id: String,
    /// Same as `id` (Tailscale clients read either).
    pub node_id: String,
    /// Name in the inventory.
    pub name: String,
    /// Hostname the agent reported.
    pub hostname: String,
    /// Tailnet addresses.
    pub addresses: Vec<String>,
    /// Operating system.
    pub os: String,
    /// Tags.
    pub tags: Vec<String>,
    /// Routes the node advertises.
    pub advertised_routes: Vec<String>,
    /// Whether the agent runs with `--no-logs-no-support`.
    pub no_logs_no_support: bool,
    /// The agent's public instance ID (logs-service), if known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    /// The user who registered it.
    pub user: String,
    /// Registration time (RFC 3339).
    pub created: String,
    /// Last contact (RFC 3339).
    pub last_seen: String,
    /// Tailnet ID.
    pub tailnet_id: String,
}

/// RFC 3339 text of a Unix-nanosecond time.
pub fn rfc3339(nanos: i64) -> String {
    format_nanos(nanos)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [Permission; 13] = PERMISSIONS;

    /// The matrix in ARCHITECTURE.md is the specification: the code must
    /// say exactly what its table says, cell by cell.
    #[test]
    fn roles_allow_exactly_what_the_documented_matrix_says() {
        let doc = include_str!("../../../../ARCHITECTURE.md");
        let mut rows = 0;
        for line in doc.lines() {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            if cells.len() < 10 {
                continue;
            }
            let Some(name) = cells[1].split('`').nth(1) else {
                continue;
            };
            let Some(p) = ALL.into_iter().find(|p| p.name() == name) else {
                continue;
            };
            for (i, role) in ROLES.into_iter().enumerate() {
                let documented = cells[2 + i] == "✓";
                assert_eq!(
                    role.allows(p),
                    documented,
                    "{role} / {name}: code and ARCHITECTURE.md disagree"
                );
            }
            rows += 1;
        }
        assert_eq!(rows, ALL.len(), "every permission has a row in the matrix");
    }

    #[test]
    fn rank_rules_follow_the_permission_sets() {
        use Role::{Admin, Auditor, BillingAdmin, ItAdmin, Member, NetworkAdmin, Owner};
        // Row: manager; the roles it manages.
        let table: [(Role, &[Role]); 7] = [
            (Owner, &ROLES),
            (
                Admin,
                &[Admin, NetworkAdmin, ItAdmin, BillingAdmin, Auditor, Member],
            ),
            (
                ItAdmin,
                &[NetworkAdmin, ItAdmin, BillingAdmin, Auditor, Member],
            ),
            (NetworkAdmin, &[NetworkAdmin, BillingAdmin, Auditor, Member]),
            (BillingAdmin, &[BillingAdmin, Member]),
            (Auditor, &[BillingAdmin, Auditor, Member]),
            (Member, &[Member]),
        ];
        for (manager, managed) in table {
            for target in ROLES {
                assert_eq!(
                    manager.may_manage(target),
                    managed.contains(&target),
                    "{manager} managing {target}"
                );
                assert_eq!(
                    manager.lacks_of(target).is_none(),
                    managed.contains(&target)
                );
                assert_eq!(
                    manager.may_create_key_for(target),
                    manager == Owner || (manager == Admin && !matches!(target, Owner | Admin)),
                    "{manager} creating a key for {target}"
                );
            }
        }
        assert_eq!(
            NetworkAdmin.lacks_of(ItAdmin),
            Some(Permission::DevicesWrite)
        );
        assert_eq!(Admin.lacks_of(Owner), Some(Permission::TailnetsWrite));
        assert_eq!(ItAdmin.with_article(), "an it-admin");
        assert_eq!(NetworkAdmin.with_article(), "a network-admin");
        for r in ROLES {
            assert_eq!(Role::parse(r.name()), Some(r));
        }
    }
}
