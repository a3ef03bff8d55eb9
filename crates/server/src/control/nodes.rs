//! The node inventory: agents register into it with an auth key; admins
//! list, rename, tag and remove nodes.

use super::audit::{Actor, AuditContext, Change, EventSpec, Target};
use super::model::{Device, rfc3339};
use super::principals::{validate_tags, validate_text};
use super::{ControlDb, ControlError, json_list, new_id, to_json_list, truncate};
use serde::Deserialize;
use serde_json::{Value, json};
use sqlx::Row;

/// What an agent's registration or report did to its node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Registered {
    /// A new node (auth key).
    Created,
    /// A known node whose details changed (audited).
    Updated,
    /// A known node, nothing changed but `lastSeen`.
    Unchanged,
}

/// What an agent reports when it registers.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Registration {
    /// Node name (defaults to the hostname).
    #[serde(default)]
    pub name: String,
    /// Hostname.
    pub hostname: String,
    /// Operating system.
    #[serde(default)]
    pub os: String,
    /// Tailnet addresses (IPs or CIDRs).
    #[serde(default)]
    pub addresses: Vec<String>,
    /// Requested tags (the auth key's tags win when it has some).
    #[serde(default)]
    pub tags: Vec<String>,
    /// Advertised routes (CIDRs).
    #[serde(default)]
    pub advertised_routes: Vec<String>,
    /// `--no-logs-no-support`.
    #[serde(default)]
    pub no_logs_no_support: bool,
}

/// The node name a hostname gives: its first label, lowercased, with
/// characters a DNS label cannot hold turned into `-` (`my_host.lan` →
/// `my-host`), at most 63 characters; `node` when nothing is left.
pub fn name_from_hostname(hostname: &str) -> String {
    let label = hostname.split('.').next().unwrap_or_default();
    let mapped: String = label
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .take(63)
        .collect();
    let trimmed = mapped.trim_matches('-');
    if trimmed.is_empty() {
        "node".into()
    } else {
        trimmed.to_owned()
    }
}

/// Whether `name` is `base` or `base` with a `-N` suffix
/// ([`ControlDb::unique_name`]'s): a name the server gave, not an admin.
fn is_generated_name(name: &str, base: &str) -> bool {
    name == base
        || name
            .strip_prefix(base)
            .and_then(|r| r.strip_prefix('-'))
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// Checks a node name: 1–63 of letters, digits and `-`, not starting or
/// ending with `-` (a DNS label).
pub fn validate_node_name(name: &str) -> Result<(), ControlError> {
    let ok = (1..=63).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(ControlError::Invalid(format!(
            "node name {:?} is not valid: use 1 to 63 letters, digits or '-' (a DNS label)",
            truncate(name, 80)
        )))
    }
}

fn validate_cidrs(field: &str, list: &[String]) -> Result<(), ControlError> {
    if list.len() > 256 {
        return Err(ControlError::Invalid(format!(
            "{field}: at most 256 entries"
        )));
    }
    for a in list {
        let (ip, bits) = a
            .split_once('/')
            .map_or((a.as_str(), None), |(i, b)| (i, Some(b)));
        let parsed: Option<std::net::IpAddr> = ip.parse().ok();
        let bits_ok = match (parsed, bits) {
            (Some(_), None) => true,
            (Some(std::net::IpAddr::V4(_)), Some(b)) => b.parse::<u8>().is_ok_and(|b| b <= 32),
            (Some(std::net::IpAddr::V6(_)), Some(b)) => b.parse::<u8>().is_ok_and(|b| b <= 128),
            (None, _) => false,
        };
        if !bits_ok {
            return Err(ControlError::Invalid(format!(
                "{field}: {:?} is not an IP address or CIDR",
                truncate(a, 80)
            )));
        }
    }
    Ok(())
}

/// The host address of an `addresses` entry (an IP, or an IP with a prefix
/// length, which is ignored): two entries with the same one conflict.
pub fn host_ip(entry: &str) -> Option<std::net::IpAddr> {
    entry.split('/').next().and_then(|ip| ip.parse().ok())
}

/// Another node of the tailnet that holds addresses a node asks for.
struct Holder {
    node: Device,
    /// The asked-for entries it holds (as the asking node wrote them).
    taken: Vec<String>,
}

/// What to do about the addresses a registering node asks for.
enum AddressCheck {
    /// Nobody else holds them.
    Free,
    /// Only nodes with the same hostname hold them: the machine registers
    /// again (its data directory was wiped); the addresses move to it.
    TakeOver(Vec<Holder>),
}

fn conflict_error(holder: &Holder, own_hostname: bool) -> ControlError {
    let what = if own_hostname {
        ""
    } else {
        " with another hostname"
    };
    ControlError::Conflict(format!(
        "address {} is already held by node {} ({}) of this tailnet{what}; if that node is gone, remove it (tally nodes delete {}), otherwise fix this node's addresses",
        holder.taken.join(", "),
        holder.node.name,
        holder.node.id,
        holder.node.id
    ))
}

const NODE_COLS: &str = "id, tailnet_id, name, hostname, os, addresses, tags, routes, no_logs, instance, user_id, created, last_seen";

fn node_from_row(r: &sqlx::any::AnyRow) -> Result<Device, ControlError> {
    let id: String = r.try_get("id")?;
    Ok(Device {
        node_id: id.clone(),
        id,
        name: r.try_get("name")?,
        hostname: r.try_get("hostname")?,
        addresses: json_list(&r.try_get::<String, _>("addresses")?),
        os: r.try_get("os")?,
        tags: json_list(&r.try_get::<String, _>("tags")?),
        advertised_routes: json_list(&r.try_get::<String, _>("routes")?),
        no_logs_no_support: r.try_get::<i64, _>("no_logs")? != 0,
        instance: r.try_get("instance")?,
        user: r.try_get("user_id")?,
        created: rfc3339(r.try_get("created")?),
        last_seen: rfc3339(r.try_get("last_seen")?),
        tailnet_id: r.try_get("tailnet_id")?,
    })
}

fn node_target(d: &Device, property: &str) -> Target {
    Target {
        id: d.id.clone(),
        name: d.name.clone(),
        target_type: "NODE".into(),
        property: property.into(),
        is_ephemeral: false,
    }
}

/// A rename and/or retag in one change.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeUpdate {
    /// New name.
    pub name: Option<String>,
    /// New tags (replacing the old).
    pub tags: Option<Vec<String>>,
}

impl ControlDb {
    /// The other nodes of the change's tailnet holding any of `wanted`
    /// (read inside the change, so two registrations cannot both take an
    /// address).
    async fn holders(
        &self,
        change: &mut Change,
        except: Option<&str>,
        wanted: &[String],
    ) -> Result<Vec<Holder>, ControlError> {
        let wanted: Vec<(std::net::IpAddr, &String)> = wanted
            .iter()
            .filter_map(|a| host_ip(a).map(|ip| (ip, a)))
            .collect();
        if wanted.is_empty() {
            return Ok(Vec::new());
        }
        let tailnet = change.tailnet_id().to_owned();
        let rows = sqlx::query(&format!(
            "SELECT {NODE_COLS} FROM nodes WHERE tailnet_id = $1 ORDER BY created, id"
        ))
        .bind(tailnet)
        .fetch_all(change.tx())
        .await?;
        let mut out = Vec::new();
        for r in &rows {
            let node = node_from_row(r)?;
            if Some(node.id.as_str()) == except {
                continue;
            }
            let held: Vec<std::net::IpAddr> =
                node.addresses.iter().filter_map(|a| host_ip(a)).collect();
            let taken: Vec<String> = wanted
                .iter()
                .filter(|(ip, _)| held.contains(ip))
                .map(|(_, a)| (*a).clone())
                .collect();
            if !taken.is_empty() {
                out.push(Holder { node, taken });
            }
        }
        Ok(out)
    }

    /// Checks the addresses of a new node: free, or held only by nodes of
    /// the same hostname (taken over), else 409 naming the holder.
    async fn check_new_addresses(
        &self,
        change: &mut Change,
        reg: &Registration,
    ) -> Result<AddressCheck, ControlError> {
        let holders = self.holders(change, None, &reg.addresses).await?;
        if holders.is_empty() {
            return Ok(AddressCheck::Free);
        }
        if let Some(other) = holders
            .iter()
            .find(|h| !h.node.hostname.eq_ignore_ascii_case(&reg.hostname))
        {
            return Err(conflict_error(other, false));
        }
        Ok(AddressCheck::TakeOver(holders))
    }

    /// Moves the addresses in `holders` to the node `new_id` (same
    /// hostname, registering again): one UPDATE event per old node.
    async fn take_over(
        &self,
        change: &mut Change,
        holders: Vec<Holder>,
        new_id: &str,
    ) -> Result<(), ControlError> {
        for h in holders {
            let gone: Vec<std::net::IpAddr> = h.taken.iter().filter_map(|a| host_ip(a)).collect();
            let kept: Vec<String> = h
                .node
                .addresses
                .iter()
                .filter(|a| host_ip(a).is_none_or(|ip| !gone.contains(&ip)))
                .cloned()
                .collect();
            sqlx::query("UPDATE nodes SET addresses = $1 WHERE id = $2")
                .bind(to_json_list(&kept))
                .bind(&h.node.id)
                .execute(change.tx())
                .await?;
            change
                .record(
                    EventSpec::new("UPDATE", node_target(&h.node, "addresses"))
                        .values(json!(h.node.addresses), json!(kept))
                        .details(format!(
                            "addresses taken over by node {new_id}, registered again with the same hostname {}",
                            h.node.hostname
                        )),
                )
                .await?;
        }
        Ok(())
    }

    /// Every registered agent instance: (public ID hex, node ID, tailnet ID,
    /// node name).
    pub async fn node_instances(
        &self,
    ) -> Result<Vec<(String, String, String, String)>, ControlError> {
        sqlx::query("SELECT instance, id, tailnet_id, name FROM nodes WHERE instance IS NOT NULL")
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| {
                Ok((
                    r.try_get("instance")?,
                    r.try_get("id")?,
                    r.try_get("tailnet_id")?,
                    r.try_get("name")?,
                ))
            })
            .collect()
    }

    /// The node whose agent has this instance (public ID), in any tailnet.
    pub async fn node_by_instance(
        &self,
        instance: &tally_proto::PublicId,
    ) -> Result<Option<Device>, ControlError> {
        sqlx::query(&format!(
            "SELECT {NODE_COLS} FROM nodes WHERE instance = $1"
        ))
        .bind(instance.to_string())
        .fetch_optional(&self.pool)
        .await?
        .map(|r| node_from_row(&r))
        .transpose()
    }

    /// An agent's registration: a known instance updates its node (audited
    /// only when something changed; otherwise only `lastSeen` moves); an
    /// unknown one needs a valid auth key and creates a node. Returns the
    /// node and what the registration did.
    pub async fn register_agent(
        &self,
        instance: &tally_proto::PublicId,
        auth_key: Option<&str>,
        reg: &Registration,
        remote: Option<String>,
    ) -> Result<(Device, Registered), ControlError> {
        validate_text("hostname", &reg.hostname, 253)?;
        if reg.hostname.is_empty() {
            return Err(ControlError::Invalid("hostname is required".into()));
        }
        validate_text("os", &reg.os, 64)?;
        let name = if reg.name.is_empty() {
            name_from_hostname(&reg.hostname)
        } else {
            reg.name.clone()
        };
        validate_node_name(&name)?;
        validate_cidrs("addresses", &reg.addresses)?;
        validate_cidrs("advertisedRoutes", &reg.advertised_routes)?;
        validate_tags(&reg.tags)?;
        let now = tally_proto::timefmt::now_nanos();
        if let Some(old) = self.node_by_instance(instance).await? {
            let changed = old.hostname != reg.hostname
                || old.os != reg.os
                || old.addresses != reg.addresses
                || old.advertised_routes != reg.advertised_routes
                || old.no_logs_no_support != reg.no_logs_no_support;
            if !changed {
                sqlx::query("UPDATE nodes SET last_seen = $1 WHERE id = $2")
                    .bind(now)
                    .bind(&old.id)
                    .execute(&self.pool)
                    .await?;
                return Ok((
                    self.node(&old.tailnet_id, &old.id).await?,
                    Registered::Unchanged,
                ));
            }
            let ctx = AuditContext {
                actor: Actor {
                    id: old.id.clone(),
                    actor_type: "NODE".into(),
                    login_name: old.name.clone(),
                    display_name: old.hostname.clone(),
                    tags: old.tags.clone(),
                },
                origin: super::audit::Origin::Api,
                remote,
            };
            let mut change = self.begin_change(&old.tailnet_id, &ctx).await?;
            // Addresses this node did not hold yet must be free: a node that
            // reports in has no auth key, so it takes no one's address.
            let added: Vec<String> = reg
                .addresses
                .iter()
                .filter(|a| {
                    host_ip(a)
                        .is_some_and(|ip| !old.addresses.iter().any(|o| host_ip(o) == Some(ip)))
                })
                .cloned()
                .collect();
            if let Some(h) = self
                .holders(&mut change, Some(&old.id), &added)
                .await?
                .first()
            {
                return Err(conflict_error(
                    h,
                    h.node.hostname.eq_ignore_ascii_case(&reg.hostname),
                ));
            }
            sqlx::query(
                "UPDATE nodes SET hostname = $1, os = $2, addresses = $3, routes = $4, no_logs = $5, last_seen = $6 WHERE id = $7",
            )
            .bind(&reg.hostname)
            .bind(&reg.os)
            .bind(to_json_list(&reg.addresses))
            .bind(to_json_list(&reg.advertised_routes))
            .bind(i64::from(reg.no_logs_no_support))
            .bind(now)
            .bind(&old.id)
            .execute(change.tx())
            .await?;
            let old_values = json!({
                "hostname": old.hostname, "os": old.os, "addresses": old.addresses,
                "advertisedRoutes": old.advertised_routes, "noLogsNoSupport": old.no_logs_no_support,
            });
            let new_values = json!({
                "hostname": reg.hostname, "os": reg.os, "addresses": reg.addresses,
                "advertisedRoutes": reg.advertised_routes, "noLogsNoSupport": reg.no_logs_no_support,
            });
            change
                .record(
                    EventSpec::new("UPDATE", node_target(&old, ""))
                        .values(old_values, new_values)
                        .details("the agent reported new node details"),
                )
                .await?;
            change.commit().await?;
            self.rename_after_hostname(&old, &reg.hostname).await?;
            return Ok((
                self.node(&old.tailnet_id, &old.id).await?,
                Registered::Updated,
            ));
        }
        let Some(secret) = auth_key else {
            return Err(ControlError::Unauthorized(
                "this node is not registered yet: start the agent with --auth-key (tally keys create --type auth)".into(),
            ));
        };
        let key = self.check_auth_key(secret).await?;
        let tags = if key.caps.tags.is_empty() {
            reg.tags.clone()
        } else {
            key.caps.tags.clone()
        };
        let user = sqlx::query("SELECT login_name, display_name FROM users WHERE id = $1")
            .bind(&key.user_id)
            .fetch_optional(&self.pool)
            .await?;
        let (login, display) = match user {
            Some(u) => (u.try_get("login_name")?, u.try_get("display_name")?),
            None => (String::new(), String::new()),
        };
        let ctx = AuditContext {
            actor: Actor {
                id: key.user_id.clone(),
                actor_type: "USER".into(),
                login_name: login,
                display_name: display,
                tags: Vec::new(),
            },
            origin: super::audit::Origin::Api,
            remote,
        };
        let mut change = self.begin_change(&key.tailnet_id, &ctx).await?;
        // A one-off key is spent by this registration (checked again under the lock).
        let spent = sqlx::query(
            "UPDATE keys SET uses = uses + 1 WHERE id = $1 AND (reusable = 1 OR uses = 0)",
        )
        .bind(&key.key_id)
        .execute(change.tx())
        .await?
        .rows_affected();
        if spent != 1 {
            return Err(ControlError::Unauthorized(
                "the auth key was for one use and has been used; create a reusable one".into(),
            ));
        }
        let addresses = self.check_new_addresses(&mut change, reg).await?;
        let id = new_id("n");
        let name = self
            .unique_name(&mut change, &key.tailnet_id, &name, &id)
            .await?;
        sqlx::query(&format!(
            "INSERT INTO nodes ({NODE_COLS}, key_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)"
        ))
        .bind(&id)
        .bind(&key.tailnet_id)
        .bind(&name)
        .bind(&reg.hostname)
        .bind(&reg.os)
        .bind(to_json_list(&reg.addresses))
        .bind(to_json_list(&tags))
        .bind(to_json_list(&reg.advertised_routes))
        .bind(i64::from(reg.no_logs_no_support))
        .bind(instance.to_string())
        .bind(&key.user_id)
        .bind(now)
        .bind(now)
        .bind(&key.key_id)
        .execute(change.tx())
        .await?;
        let target = Target {
            id: id.clone(),
            name: name.clone(),
            target_type: "NODE".into(),
            property: String::new(),
            is_ephemeral: key.caps.ephemeral,
        };
        let new_values = json!({
            "name": name, "hostname": reg.hostname, "os": reg.os, "addresses": reg.addresses,
            "tags": tags, "advertisedRoutes": reg.advertised_routes,
            "noLogsNoSupport": reg.no_logs_no_support, "instance": instance.to_string(),
        });
        change
            .record(
                EventSpec::new("CREATE", target)
                    .values(Value::Null, new_values)
                    .details(format!("registered with auth key {}", key.key_id)),
            )
            .await?;
        if let AddressCheck::TakeOver(holders) = addresses {
            self.take_over(&mut change, holders, &id).await?;
        }
        change.commit().await?;
        Ok((self.node(&key.tailnet_id, &id).await?, Registered::Created))
    }

    /// What agents are told about every node (tailnet, ID, name, addresses,
    /// routes as stored), in a fixed order: the catalog fingerprints it to
    /// notice changes made by other servers.
    pub async fn agent_view_rows(&self) -> Result<Vec<[String; 5]>, ControlError> {
        sqlx::query(
            "SELECT tailnet_id, id, name, addresses, routes FROM nodes ORDER BY tailnet_id, id",
        )
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|r| {
            Ok([
                r.try_get("tailnet_id")?,
                r.try_get("id")?,
                r.try_get("name")?,
                r.try_get("addresses")?,
                r.try_get("routes")?,
            ])
        })
        .collect()
    }

    /// Nodes of a tailnet, by name.
    pub async fn nodes(&self, tailnet_id: &str) -> Result<Vec<Device>, ControlError> {
        sqlx::query(&format!(
            "SELECT {NODE_COLS} FROM nodes WHERE tailnet_id = $1 ORDER BY name, id"
        ))
        .bind(tailnet_id)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(node_from_row)
        .collect()
    }

    /// One node of a tailnet.
    pub async fn node(&self, tailnet_id: &str, id: &str) -> Result<Device, ControlError> {
        let row = sqlx::query(&format!(
            "SELECT {NODE_COLS} FROM nodes WHERE id = $1 AND tailnet_id = $2"
        ))
        .bind(id)
        .bind(tailnet_id)
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| ControlError::NotFound(format!("device {}", truncate(id, 40))))?;
        node_from_row(&row)
    }

    /// Renames and/or retags a node: one event per property, one group.
    pub async fn update_node(
        &self,
        tailnet_id: &str,
        ctx: &AuditContext,
        id: &str,
        update: &NodeUpdate,
    ) -> Result<Device, ControlError> {
        if update.name.is_none() && update.tags.is_none() {
            return Err(ControlError::Invalid(
                "nothing to change: give name and/or tags".into(),
            ));
        }
        if let Some(n) = &update.name {
            validate_node_name(n)?;
        }
        if let Some(t) = &update.tags {
            validate_tags(t)?;
        }
        let node = self.node(tailnet_id, id).await?;
        let mut change = self.begin_change(tailnet_id, ctx).await?;
        let mut changed = 0;
        if let Some(n) = update.name.as_ref().filter(|n| **n != node.name) {
            if let Some(other) = self.node_named(&mut change, tailnet_id, n, id).await? {
                return Err(ControlError::Conflict(format!(
                    "another device ({other}) is already named {n:?}; choose another name or rename that one first"
                )));
            }
            sqlx::query("UPDATE nodes SET name = $1 WHERE id = $2")
                .bind(n)
                .bind(id)
                .execute(change.tx())
                .await?;
            change
                .record(
                    EventSpec::new("UPDATE", node_target(&node, "name"))
                        .values(json!(node.name), json!(n)),
                )
                .await?;
            changed += 1;
        }
        if let Some(t) = update.tags.as_ref().filter(|t| **t != node.tags) {
            sqlx::query("UPDATE nodes SET tags = $1 WHERE id = $2")
                .bind(to_json_list(t))
                .bind(id)
                .execute(change.tx())
                .await?;
            change
                .record(
                    EventSpec::new("UPDATE", node_target(&node, "tags"))
                        .values(json!(node.tags), json!(t)),
                )
                .await?;
            changed += 1;
        }
        if changed == 0 {
            return Err(ControlError::Conflict(
                "the device already has that name and those tags".into(),
            ));
        }
        change.commit().await?;
        self.node(tailnet_id, id).await
    }

    /// The ID of a node of `tailnet_id` other than `except_id` named
    /// `name`, if any (names compare case-insensitively, as DNS does).
    async fn node_named(
        &self,
        change: &mut Change,
        tailnet_id: &str,
        name: &str,
        except_id: &str,
    ) -> Result<Option<String>, ControlError> {
        let row = sqlx::query(
            "SELECT id FROM nodes WHERE tailnet_id = $1 AND LOWER(name) = LOWER($2) AND id <> $3 LIMIT 1",
        )
        .bind(tailnet_id)
        .bind(name)
        .bind(except_id)
        .fetch_optional(change.tx())
        .await?;
        Ok(row.map(|r| r.try_get("id")).transpose()?)
    }

    /// `base`, or `base-1`, `base-2`... the first that no other node of
    /// the tailnet has (as Tailscale names machines that share a hostname).
    async fn unique_name(
        &self,
        change: &mut Change,
        tailnet_id: &str,
        base: &str,
        except_id: &str,
    ) -> Result<String, ControlError> {
        if self
            .node_named(change, tailnet_id, base, except_id)
            .await?
            .is_none()
        {
            return Ok(base.to_owned());
        }
        for n in 1..10_000u32 {
            let suffix = format!("-{n}");
            let stem: String = base.chars().take(63 - suffix.len()).collect();
            let candidate = format!("{}{suffix}", stem.trim_end_matches('-'));
            if self
                .node_named(change, tailnet_id, &candidate, except_id)
                .await?
                .is_none()
            {
                return Ok(candidate);
            }
        }
        Err(ControlError::Conflict(format!(
            "10,000 devices are named after {base:?}; rename some"
        )))
    }

    /// After an agent reported a new hostname: a node whose name the
    /// server derived from the old hostname (never renamed by an admin) is
    /// renamed after the new one, audited as a change by the system.
    async fn rename_after_hostname(
        &self,
        old: &Device,
        hostname: &str,
    ) -> Result<(), ControlError> {
        let old_base = name_from_hostname(&old.hostname);
        let new_base = name_from_hostname(hostname);
        if old_base == new_base || !is_generated_name(&old.name, &old_base) {
            return Ok(());
        }
        let mut change = self
            .begin_change(&old.tailnet_id, &AuditContext::system())
            .await?;
        let name = self
            .unique_name(&mut change, &old.tailnet_id, &new_base, &old.id)
            .await?;
        sqlx::query("UPDATE nodes SET name = $1 WHERE id = $2")
            .bind(&name)
            .bind(&old.id)
            .execute(change.tx())
            .await?;
        change
            .record(
                EventSpec::new("UPDATE", node_target(old, "name"))
                    .values(json!(old.name), json!(name))
                    .details(format!(
                        "renamed after the hostname its agent reported, {}",
                        truncate(hostname, 80)
                    )),
            )
            .await?;
        change.commit().await
    }

    /// Removes a node from the inventory.
    pub async fn delete_node(
        &self,
        tailnet_id: &str,
        ctx: &AuditContext,
        id: &str,
    ) -> Result<(), ControlError> {
        let node = self.node(tailnet_id, id).await?;
        let mut change = self.begin_change(tailnet_id, ctx).await?;
        sqlx::query("DELETE FROM nodes WHERE id = $1")
            .bind(id)
            .execute(change.tx())
            .await?;
        change
            .record(EventSpec::new("DELETE", node_target(&node, "")).values(
                json!({ "name": node.name, "addresses": node.addresses, "tags": node.tags }),
                Value::Null,
            ))
            .await?;
        change.commit().await
    }
}
