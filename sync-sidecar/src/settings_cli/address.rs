//! Which settings row a command line names: the `TARGET` argument of
//! `settings get|set|unset` and the grouping of printed changes.
//!
//! It follows the column encoding of `tg_settings` (`tenant`/`route` are `''`
//! when not applicable): `@global` (or `''`) is global scope, `acme` is tenant
//! scope, `acme/orders` is route `orders` of tenant `acme`, `@plan:gold` is
//! plan `gold` (scope `plan`, its name in the `tenant` column). Tenant ids and
//! plan names cannot contain `@` or `/`, so none of these forms is ambiguous.

use std::fmt;

use crate::settings::{Scope, SettingRow};

/// The `TARGET` spelling of global scope.
pub const GLOBAL: &str = "@global";
/// The `TARGET` prefix of a plan.
pub const PLAN: &str = "@plan:";

/// Scope identity of a row (everything but its key). Orders global first,
/// then each tenant followed by its routes, then the plans.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Address {
    /// A plan's row: `tenant` holds the plan's name.
    pub plan: bool,
    pub tenant: String,
    pub route: String,
}

impl Address {
    pub fn global() -> Self {
        Self::route("", "")
    }

    pub fn tenant(tenant: &str) -> Self {
        Self::route(tenant, "")
    }

    pub fn route(tenant: &str, route: &str) -> Self {
        Self {
            plan: false,
            tenant: tenant.to_owned(),
            route: route.to_owned(),
        }
    }

    /// Plan `name`.
    pub fn plan(name: &str) -> Self {
        Self {
            plan: true,
            tenant: name.to_owned(),
            route: String::new(),
        }
    }

    /// The address of a row as stored (its `scope`, `tenant`, `route` columns).
    pub fn of_columns(scope: Scope, tenant: &str, route: &str) -> Self {
        match scope {
            Scope::Plan => Self::plan(tenant),
            Scope::Global | Scope::Tenant | Scope::Route => Self::route(tenant, route),
        }
    }

    /// Parses a `TARGET` argument. The tenant id or plan name itself is
    /// checked later, by the same settings check the sync runs, so that its
    /// finding reads the same.
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.is_empty() || text == GLOBAL {
            return Ok(Self::global());
        }
        if let Some(name) = text.strip_prefix(PLAN) {
            if name.is_empty() || name.contains('/') {
                return Err(format!(
                    "target `{}`: a plan target is {PLAN}NAME",
                    crate::text::bounded_to(text, 100)
                ));
            }
            return Ok(Self::plan(name));
        }
        if text.starts_with('@') {
            return Err(format!(
                "unknown target `{}`: use {GLOBAL}, TENANT, TENANT/ROUTE or {PLAN}NAME",
                crate::text::bounded_to(text, 100)
            ));
        }
        match text.split_once('/') {
            Some((tenant, route)) if !tenant.is_empty() && !route.is_empty() => {
                Ok(Self::route(tenant, route))
            }
            Some(_) => Err(format!(
                "target `{}`: a route target is TENANT/ROUTE, both non-empty",
                crate::text::bounded_to(text, 100)
            )),
            None => Ok(Self::tenant(text)),
        }
    }

    pub fn of(row: &SettingRow) -> Self {
        Self::of_columns(row.scope, &row.tenant, &row.route)
    }

    /// The scope the columns encode.
    pub fn scope(&self) -> Scope {
        if self.plan {
            Scope::Plan
        } else if self.tenant.is_empty() {
            Scope::Global
        } else if self.route.is_empty() {
            Scope::Tenant
        } else {
            Scope::Route
        }
    }

    /// The group a change is printed under (`@global`, the tenant, or `@plan:NAME`).
    pub fn group(&self) -> String {
        match self.scope() {
            Scope::Global => GLOBAL.to_owned(),
            Scope::Plan => format!("{PLAN}{}", self.tenant),
            Scope::Tenant | Scope::Route => self.tenant.clone(),
        }
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.scope() {
            Scope::Global => f.write_str(GLOBAL),
            Scope::Tenant => f.write_str(&self.tenant),
            Scope::Route => write!(f, "{}/{}", self.tenant, self.route),
            Scope::Plan => write!(f, "{PLAN}{}", self.tenant),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_follow_the_column_encoding() {
        for (text, scope, shown) in [
            ("@global", Scope::Global, "@global"),
            ("", Scope::Global, "@global"),
            ("acme", Scope::Tenant, "acme"),
            ("acme/orders", Scope::Route, "acme/orders"),
            ("@plan:gold", Scope::Plan, "@plan:gold"),
        ] {
            let address = Address::parse(text).unwrap_or_else(|e| Address::tenant(&e));
            assert_eq!(address.scope(), scope, "{text}");
            assert_eq!(address.to_string(), shown);
        }
        for bad in ["@all", "acme/", "/orders", "@plan:", "@plan:a/b"] {
            assert!(Address::parse(bad).is_err(), "{bad}");
        }
        assert!(Address::global() < Address::tenant("a"));
        assert!(Address::tenant("a") < Address::route("a", "r"));
        assert!(Address::route("a", "r") < Address::tenant("b"));
        assert!(Address::tenant("zz") < Address::plan("a"));
        assert_eq!(
            Address::of_columns(Scope::Plan, "gold", ""),
            Address::plan("gold")
        );
    }
}
