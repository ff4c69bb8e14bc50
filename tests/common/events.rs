//! ECR's EventBridge events as the tests post them into moto's SQS: the
//! envelope and detail shapes of AWS's documentation ("Amazon ECR events and
//! EventBridge"; CloudTrail's ECR records).
#![allow(dead_code)]

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::{ACCOUNT, REGION, init};

/// The tests' own SQS client against `endpoint`.
pub(crate) async fn sqs_client(endpoint: &str) -> aws_sdk_sqs::Client {
    init();
    let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_sdk_sqs::config::Region::new(REGION))
        .endpoint_url(endpoint)
        .load()
        .await;
    aws_sdk_sqs::Client::new(&config)
}

/// A queue with a dead-letter queue after `max_receives` receives: (queue URL, DLQ URL).
pub(crate) async fn queue_with_dlq(
    sqs: &aws_sdk_sqs::Client,
    name: &str,
    max_receives: u32,
) -> (String, String) {
    use aws_sdk_sqs::types::QueueAttributeName;
    let dlq = sqs
        .create_queue()
        .queue_name(format!("{name}-dlq"))
        .send()
        .await
        .expect("create DLQ")
        .queue_url
        .expect("DLQ url");
    let dlq_arn = sqs
        .get_queue_attributes()
        .queue_url(&dlq)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .expect("DLQ attributes")
        .attributes
        .and_then(|a| a.get(&QueueAttributeName::QueueArn).cloned())
        .expect("DLQ arn");
    let redrive = json!({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": max_receives.to_string()});
    let queue = sqs
        .create_queue()
        .queue_name(name)
        .attributes(QueueAttributeName::RedrivePolicy, redrive.to_string())
        .attributes(QueueAttributeName::VisibilityTimeout, "2")
        .send()
        .await
        .expect("create queue")
        .queue_url
        .expect("queue url");
    (queue, dlq)
}

/// Posts one message.
pub(crate) async fn post(sqs: &aws_sdk_sqs::Client, queue: &str, body: &str) {
    sqs.send_message()
        .queue_url(queue)
        .message_body(body)
        .send()
        .await
        .expect("send event");
}

/// Messages waiting in a queue (moto counts exactly).
pub(crate) async fn waiting(sqs: &aws_sdk_sqs::Client, queue: &str) -> i64 {
    use aws_sdk_sqs::types::QueueAttributeName;
    let attributes = sqs
        .get_queue_attributes()
        .queue_url(queue)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
        .send()
        .await
        .expect("queue attributes")
        .attributes
        .unwrap_or_default();
    attributes.values().filter_map(|v| v.parse::<i64>().ok()).sum()
}

/// An EventBridge envelope of the test registry.
pub(crate) fn envelope(detail_type: &str, detail: Value) -> String {
    json!({
        "version": "0",
        "id": uuid::Uuid::new_v4().to_string(),
        "detail-type": detail_type,
        "source": "aws.ecr",
        "account": ACCOUNT,
        "time": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "region": REGION,
        "resources": [],
        "detail": detail,
    })
    .to_string()
}

/// `ECR Image Action` (PUSH or DELETE) of one image.
pub(crate) fn image_action(action: &str, repository: &str, digest: &str, tag: &str) -> String {
    envelope(
        "ECR Image Action",
        json!({"result": "SUCCESS", "repository-name": repository, "image-digest": digest,
               "action-type": action, "image-tag": tag}),
    )
}

/// `AWS API Call via CloudTrail` of an ECR call.
pub(crate) fn cloudtrail(event_name: &str, parameters: Value) -> String {
    envelope(
        "AWS API Call via CloudTrail",
        json!({"eventVersion": "1.08", "eventSource": "ecr.amazonaws.com", "eventName": event_name,
               "awsRegion": REGION, "eventType": "AwsApiCall", "requestParameters": parameters}),
    )
}

/// Polls `check` every 50 ms until it is true or `limit` passed; how long it took.
pub(crate) async fn within<F, Fut>(limit: Duration, mut check: F) -> Option<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while started.elapsed() < limit {
        if check().await {
            return Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}
