use super::*;

fn recorded_pages() -> Vec<(Vec<u32>, Option<String>)> {
    vec![
        (vec![1, 2], Some("t1".into())),
        (vec![3], Some("t2".into())),
        (vec![4, 5], None),
    ]
}

#[tokio::test]
async fn collect_pages_follows_every_next_token_in_order() {
    let pages = recorded_pages();
    let requested = std::sync::Mutex::new(Vec::new());
    let items = collect_pages(|token| {
        requested.lock().unwrap().push(token.clone());
        let index = match token.as_deref() {
            None => 0,
            Some("t1") => 1,
            Some("t2") => 2,
            Some(other) => panic!("unexpected token {other}"),
        };
        let page = pages[index].clone();
        async move { Ok(page) }
    })
    .await
    .expect("pages");
    assert_eq!(items, vec![1, 2, 3, 4, 5]);
    assert_eq!(
        *requested.lock().unwrap(),
        vec![None, Some("t1".to_string()), Some("t2".to_string())]
    );
}

#[tokio::test]
async fn collect_pages_stops_on_a_repeated_token() {
    let result = collect_pages(|_| async { Ok((vec![1u32], Some("same".to_string()))) }).await;
    assert!(matches!(result, Err(EcrError::Unavailable { .. })));
}

#[tokio::test]
async fn collect_pages_treats_an_empty_token_as_the_end() {
    let items = collect_pages(|_| async { Ok((vec![7u32], Some(String::new()))) })
        .await
        .expect("one page");
    assert_eq!(items, vec![7]);
}

#[tokio::test]
async fn collect_pages_passes_errors_through() {
    let result: Result<Vec<u32>, _> = collect_pages(|token| async move {
        match token {
            None => Ok((vec![1], Some("t1".into()))),
            Some(_) => Err(EcrError::Throttled {
                operation: "DescribeImages",
                code: "ThrottlingException".into(),
                message: "slow down".into(),
            }),
        }
    })
    .await;
    assert!(matches!(result, Err(EcrError::Throttled { .. })));
}
