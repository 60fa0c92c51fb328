//! List queries: a query the gateway accepts is re-encoded from typed values,
//! so the ids sent upstream are exactly the ids it chose, nothing smuggled.
#![no_main]

use ark_gateway::policy::ListQuery;
use ark_gateway::route::TaskId;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(query) = ListQuery::parse(Some(text)) {
        let chosen = [TaskId::parse("cgt-own-1").unwrap()];
        let upstream = query.upstream_query(&chosen, query.page_num(), query.page_size());
        let reparsed = ListQuery::parse(Some(&upstream)).expect("the gateway's own query parses");
        assert_eq!(reparsed.task_ids.as_deref(), Some(&chosen[..]));
        assert_eq!(reparsed.status, query.status);
        assert_eq!(reparsed.model, query.model);
    }
});
