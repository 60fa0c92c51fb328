//! List queries: parsed strictly from the tenant's query string, then narrowed
//! to the tenant's own task ids before anything is sent upstream.

use crate::error::GatewayError;
use crate::route::TaskId;
use crate::spend::ArkStatus;

/// Most ids sent upstream in one list call, keeping every upstream URL
/// bounded (100 ids is about 4 KB of query string).
pub(super) const IDS_PER_UPSTREAM_CALL: usize = 100;
/// Ark's default page size when the client sends none.
pub(super) const DEFAULT_PAGE_SIZE: u32 = 10;
const MAX_PAGE: u32 = 500;
const MAX_FILTER_LEN: usize = 256;

/// A validated list query.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListQuery {
    pub page_num: Option<u32>,
    pub page_size: Option<u32>,
    pub status: Option<ArkStatus>,
    pub model: Option<String>,
    pub service_tier: Option<String>,
    /// `None`: no id filter; `Some`: only these ids (in the order given, deduplicated).
    pub task_ids: Option<Vec<TaskId>>,
}

fn invalid(param: &str, reason: &'static str) -> GatewayError {
    GatewayError::InvalidQuery {
        param: param.to_string(),
        reason,
    }
}

impl ListQuery {
    /// Parses the query string exactly as the official SDKs send it. Unknown
    /// parameters and repeated scalars are refused rather than guessed at.
    pub fn parse(query: Option<&str>) -> Result<Self, GatewayError> {
        let mut q = ListQuery::default();
        let Some(query) = query else { return Ok(q) };
        for (key, value) in form_urlencoded::parse(query.as_bytes()) {
            match &*key {
                "page_num" => set_once(&mut q.page_num, "page_num", parse_page(&value, "page_num")?)?,
                "page_size" => set_once(&mut q.page_size, "page_size", parse_page(&value, "page_size")?)?,
                "filter.status" => {
                    let status = ArkStatus::parse(&value).ok_or_else(|| {
                        invalid(
                            "filter.status",
                            "expected queued, running, succeeded, failed, cancelled or expired",
                        )
                    })?;
                    set_once(&mut q.status, "filter.status", status)?
                }
                "filter.model" => set_once(&mut q.model, "filter.model", filter_text(&value, "filter.model")?)?,
                "filter.service_tier" => set_once(
                    &mut q.service_tier,
                    "filter.service_tier",
                    filter_text(&value, "filter.service_tier")?,
                )?,
                "filter.task_ids" => {
                    let id = TaskId::parse(&value).ok_or_else(|| invalid("filter.task_ids", "not a task id"))?;
                    let ids = q.task_ids.get_or_insert_with(Vec::new);
                    if !ids.contains(&id) {
                        ids.push(id);
                    }
                }
                _ => return Err(invalid(&key.chars().take(64).collect::<String>(), "unknown parameter")),
            }
        }
        Ok(q)
    }

    pub fn page_num(&self) -> u32 {
        self.page_num.unwrap_or(1)
    }

    pub fn page_size(&self) -> u32 {
        self.page_size.unwrap_or(DEFAULT_PAGE_SIZE)
    }

    /// How many tasks come before the requested page.
    pub fn page_start(&self) -> usize {
        (self.page_num() as usize - 1).saturating_mul(self.page_size() as usize)
    }

    /// Whether the query narrows the list (otherwise it is the tenant's
    /// whole list, paged).
    pub fn filters(&self) -> bool {
        self.status.is_some() || self.model.is_some() || self.service_tier.is_some() || self.task_ids.is_some()
    }

    /// The upstream query for `ids`, with the given paging and this query's filters.
    pub fn upstream_query(&self, ids: &[TaskId], page_num: u32, page_size: u32) -> String {
        let mut out = form_urlencoded::Serializer::new(String::with_capacity(64 + ids.len() * 44));
        out.append_pair("page_num", &page_num.to_string());
        out.append_pair("page_size", &page_size.to_string());
        if let Some(status) = self.status {
            out.append_pair("filter.status", status.as_str());
        }
        if let Some(model) = &self.model {
            out.append_pair("filter.model", model);
        }
        if let Some(tier) = &self.service_tier {
            out.append_pair("filter.service_tier", tier);
        }
        for id in ids {
            out.append_pair("filter.task_ids", id.as_str());
        }
        out.finish()
    }
}

fn set_once<T>(slot: &mut Option<T>, param: &str, value: T) -> Result<(), GatewayError> {
    if slot.replace(value).is_some() {
        return Err(invalid(param, "given more than once"));
    }
    Ok(())
}

fn parse_page(value: &str, param: &str) -> Result<u32, GatewayError> {
    value
        .parse::<u32>()
        .ok()
        .filter(|n| (1..=MAX_PAGE).contains(n))
        .ok_or_else(|| invalid(param, "expected a whole number from 1 to 500"))
}

fn filter_text(value: &str, param: &str) -> Result<String, GatewayError> {
    if value.is_empty() || value.len() > MAX_FILTER_LEN || value.chars().any(char::is_control) {
        return Err(invalid(param, "expected 1-256 printable characters"));
    }
    Ok(value.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_the_sdks_send() {
        let q = ListQuery::parse(Some(
            "page_num=2&page_size=50&filter.status=queued&filter.model=m%2F1&filter.task_ids=a&filter.task_ids=b&filter.task_ids=a",
        ))
        .unwrap();
        assert_eq!(q.page_num(), 2);
        assert_eq!(q.page_size(), 50);
        assert_eq!(q.status, Some(ArkStatus::Queued));
        assert_eq!(q.model.as_deref(), Some("m/1"));
        let ids: Vec<_> = q.task_ids.unwrap().iter().map(|i| i.to_string()).collect();
        assert_eq!(ids, ["a", "b"]);
        assert_eq!(ListQuery::parse(None).unwrap().page_size(), DEFAULT_PAGE_SIZE);
    }

    #[test]
    fn refuses_bad_values() {
        for (query, param) in [
            ("page_num=0", "page_num"),
            ("page_size=501", "page_size"),
            ("page_size=ten", "page_size"),
            ("page_num=1&page_num=2", "page_num"),
            ("filter.status=done", "filter.status"),
            ("filter.task_ids=..%2Fx", "filter.task_ids"),
            ("filter.model=", "filter.model"),
            ("api_key=abc", "api_key"),
        ] {
            match ListQuery::parse(Some(query)) {
                Err(GatewayError::InvalidQuery { param: p, .. }) => assert_eq!(p, param, "{query}"),
                other => panic!("{query}: {other:?}"),
            }
        }
    }

    #[test]
    fn upstream_query_is_re_encoded_from_typed_values() {
        let q = ListQuery {
            model: Some("a&filter.task_ids=stolen".into()),
            status: Some(ArkStatus::Succeeded),
            ..Default::default()
        };
        let ids = [TaskId::parse("cgt-1").unwrap()];
        let query = q.upstream_query(&ids, 1, 1);
        assert_eq!(
            query,
            "page_num=1&page_size=1&filter.status=succeeded&filter.model=a%26filter.task_ids%3Dstolen&filter.task_ids=cgt-1"
        );
        let reparsed = ListQuery::parse(Some(&query)).unwrap();
        assert_eq!(reparsed.task_ids.unwrap(), ids);
    }
}
