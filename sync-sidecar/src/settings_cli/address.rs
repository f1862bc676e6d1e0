//! Which settings row a command line names: the `TARGET` argument of
//! `settings get|set|unset` and the tenant grouping of printed changes.
//!
//! It follows the column encoding of `tg_settings` (`tenant`/`route` are `''`
//! when not applicable): `@global` (or `''`) is global scope, `acme` is tenant
//! scope, `acme/orders` is route `orders` of tenant `acme`. Tenant ids cannot
//! contain `@` or `/`, so none of these forms is ambiguous.

use std::fmt;

use crate::settings::{Scope, SettingRow};

/// The `TARGET` spelling of global scope.
pub const GLOBAL: &str = "@global";

/// Scope identity of a row (everything but its key). Orders global first,
/// then each tenant followed by its routes.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Address {
    pub tenant: String,
    pub route: String,
}

impl Address {
    pub fn global() -> Self {
        Self {
            tenant: String::new(),
            route: String::new(),
        }
    }

    pub fn tenant(tenant: &str) -> Self {
        Self {
            tenant: tenant.to_owned(),
            route: String::new(),
        }
    }

    pub fn route(tenant: &str, route: &str) -> Self {
        Self {
            tenant: tenant.to_owned(),
            route: route.to_owned(),
        }
    }

    /// Parses a `TARGET` argument. The tenant id itself is checked later, by
    /// the same settings check the sync runs, so that its finding reads the same.
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.is_empty() || text == GLOBAL {
            return Ok(Self::global());
        }
        if text.starts_with('@') {
            return Err(format!(
                "unknown target `{}`: use {GLOBAL}, TENANT or TENANT/ROUTE",
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
        Self::route(&row.tenant, &row.route)
    }

    /// The scope the columns encode.
    pub fn scope(&self) -> Scope {
        if self.tenant.is_empty() {
            Scope::Global
        } else if self.route.is_empty() {
            Scope::Tenant
        } else {
            Scope::Route
        }
    }

    /// The tenant group a change is printed under (`@global` or the tenant).
    pub fn group(&self) -> &str {
        if self.tenant.is_empty() {
            GLOBAL
        } else {
            &self.tenant
        }
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.scope() {
            Scope::Global => f.write_str(GLOBAL),
            Scope::Tenant => f.write_str(&self.tenant),
            Scope::Route => write!(f, "{}/{}", self.tenant, self.route),
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
        ] {
            let address = Address::parse(text).unwrap_or_else(|e| Address::tenant(&e));
            assert_eq!(address.scope(), scope, "{text}");
            assert_eq!(address.to_string(), shown);
        }
        for bad in ["@all", "acme/", "/orders"] {
            assert!(Address::parse(bad).is_err(), "{bad}");
        }
        assert!(Address::global() < Address::tenant("a"));
        assert!(Address::tenant("a") < Address::route("a", "r"));
        assert!(Address::route("a", "r") < Address::tenant("b"));
    }
}
