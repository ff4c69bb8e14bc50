//! Repository policy rules: well-formed JSON, no wildcard principals, no unknown accounts.
//!
//! Only `Allow` statements are checked: a `Deny` to everyone (e.g. deny non-TLS
//! access) or to another account only narrows access. `NotPrincipal` is not
//! interpreted.

use serde_json::{Map, Value};

use super::naming::backticked;
use crate::config::RepositoryPolicyConfig;
use crate::domain::{AccountId, Violation};

/// Field of every repository policy violation.
const FIELD: &str = "settings.repository_policy";

/// The repository policy rules, compiled.
#[derive(Debug, Clone)]
pub(super) struct RepositoryPolicyRules {
    forbid_wildcard_principal: bool,
    allowed_accounts: Vec<AccountId>,
}

impl RepositoryPolicyRules {
    /// Builds the rules; each malformed account id is a problem naming its index.
    pub(super) fn compile(config: &RepositoryPolicyConfig) -> Result<Self, Vec<String>> {
        let mut problems = Vec::new();
        let mut allowed_accounts = Vec::new();
        for (index, account) in config.allowed_accounts.iter().enumerate() {
            match AccountId::parse(account) {
                Ok(account) => allowed_accounts.push(account),
                Err(v) => problems.push(format!(
                    "policy.repository_policy.allowed_accounts[{index}]: {}",
                    v.description
                )),
            }
        }
        match problems.is_empty() {
            true => Ok(Self {
                forbid_wildcard_principal: config.forbid_wildcard_principal,
                allowed_accounts,
            }),
            false => Err(problems),
        }
    }

    /// The request's policy (blank means none), or every rule it breaks.
    pub(super) fn plan(
        &self,
        requested: Option<&str>,
        registry: &AccountId,
    ) -> Result<Option<String>, Vec<Violation>> {
        let Some(text) = requested.filter(|text| !text.trim().is_empty()) else {
            return Ok(None);
        };
        let violations = match statements(text) {
            Err(violation) => vec![violation],
            Ok(statements) => statements
                .iter()
                .enumerate()
                .filter(|(_, statement)| allows(statement))
                .flat_map(|(index, statement)| self.statement_violations(index, statement, registry))
                .collect(),
        };
        match violations.is_empty() {
            true => Ok(Some(text.to_owned())),
            false => Err(violations),
        }
    }

    /// The policy with every statement the guard forbids removed, the others
    /// kept as written and in order; `None` when nothing would remain or the
    /// text is no policy at all (the repair is then to delete it).
    pub(super) fn repaired(&self, text: &str, registry: &AccountId) -> Option<String> {
        let mut policy: Value = serde_json::from_str(text).ok()?;
        let kept: Vec<Value> = statements(text)
            .ok()?
            .into_iter()
            .enumerate()
            .filter(|(index, statement)| {
                !allows(statement) || self.statement_violations(*index, statement, registry).is_empty()
            })
            .map(|(_, statement)| Value::Object(statement))
            .collect();
        if kept.is_empty() {
            return None;
        }
        policy
            .as_object_mut()?
            .insert("Statement".into(), Value::Array(kept));
        Some(policy.to_string())
    }

    fn statement_violations(
        &self,
        index: usize,
        statement: &Map<String, Value>,
        registry: &AccountId,
    ) -> Vec<Violation> {
        let name = statement_name(index, statement);
        aws_principals(statement.get("Principal"))
            .into_iter()
            .filter_map(|principal| match account_of(principal) {
                Some(Account::Any) => self.wildcard_violation(&name, principal),
                Some(Account::Id(account)) => self.cross_account_violation(&name, account, registry),
                None => None,
            })
            .collect()
    }

    fn wildcard_violation(&self, statement: &str, principal: &str) -> Option<Violation> {
        self.forbid_wildcard_principal.then(|| {
            Violation::new(
                FIELD,
                "repository-policy.wildcard-principal",
                format!("{statement} allows principal `{principal}`, which is anyone; name the accounts or roles that need access instead"),
            )
        })
    }

    fn cross_account_violation(
        &self,
        statement: &str,
        account: &str,
        registry: &AccountId,
    ) -> Option<Violation> {
        if account == registry.as_str() || self.allowed_accounts.iter().any(|a| a.as_str() == account) {
            return None;
        }
        let others: Vec<String> = self.allowed_accounts.iter().map(ToString::to_string).collect();
        let allowed = match others.is_empty() {
            true => "no other accounts are allowed".to_owned(),
            false => format!("the other allowed accounts are {}", backticked(&others)),
        };
        Some(Violation::new(
            FIELD,
            "repository-policy.cross-account",
            format!(
                "{statement} grants access to account `{account}`, which is not this registry's account `{registry}`; {allowed}"
            ),
        ))
    }
}

/// The policy's statements, or a `repository-policy.json` violation.
fn statements(text: &str) -> Result<Vec<Map<String, Value>>, Violation> {
    let json_violation = |problem: String| Violation::new(FIELD, "repository-policy.json", problem);
    let policy: Value = serde_json::from_str(text)
        .map_err(|e| json_violation(format!("the repository policy is not valid JSON: {e}")))?;
    let shape =
        "a repository policy is a JSON object like `{\"Version\": \"2012-10-17\", \"Statement\": [...]}`";
    let statements = match policy.get("Statement") {
        Some(Value::Array(list)) => list.clone(),
        Some(statement @ Value::Object(_)) => vec![statement.clone()],
        _ => {
            return Err(json_violation(format!("no `Statement` list or object; {shape}")));
        }
    };
    statements
        .into_iter()
        .enumerate()
        .map(|(index, statement)| match statement {
            Value::Object(map) => Ok(map),
            _ => Err(json_violation(format!(
                "Statement[{index}] is not an object; {shape}"
            ))),
        })
        .collect()
}

/// True unless the statement says `"Effect": "Deny"`.
fn allows(statement: &Map<String, Value>) -> bool {
    statement.get("Effect").and_then(Value::as_str) != Some("Deny")
}

/// `Statement[0] (Sid "Pull")`, for descriptions.
fn statement_name(index: usize, statement: &Map<String, Value>) -> String {
    match statement.get("Sid").and_then(Value::as_str) {
        Some(sid) => format!("Statement[{index}] (Sid `{sid}`)"),
        None => format!("Statement[{index}]"),
    }
}

/// The AWS principals of a `Principal`: `"*"`, or the strings under its `AWS` key.
/// Service, federated and canonical-user principals are not accounts and are skipped.
fn aws_principals(principal: Option<&Value>) -> Vec<&str> {
    match principal {
        Some(Value::String(principal)) => vec![principal.as_str()],
        Some(Value::Object(map)) => match map.get("AWS") {
            Some(Value::String(principal)) => vec![principal.as_str()],
            Some(Value::Array(list)) => list.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        },
        _ => Vec::new(),
    }
}

/// Whose account a principal is.
enum Account<'a> {
    /// `*`, or an ARN with a wildcard account.
    Any,
    /// A 12-digit account id.
    Id(&'a str),
}

/// The account of `*`, a bare account id, or `arn:<partition>:<service>::<account>:<resource>`.
fn account_of(principal: &str) -> Option<Account<'_>> {
    let account = match principal.strip_prefix("arn:") {
        Some(_) => principal.split(':').nth(4)?,
        None => principal,
    };
    if account.contains('*') {
        return Some(Account::Any);
    }
    AccountId::parse(account).ok().map(|_| Account::Id(account))
}

#[cfg(test)]
#[path = "repository_policy_tests.rs"]
mod tests;
