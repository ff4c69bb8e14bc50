//! The registry scanning configuration: GetScanningConfiguration and UpdateScanningConfiguration.

use super::*;

pub(super) fn frequency_of(value: i32, field: String) -> Result<Frequency, Violation> {
    match pb::ScanFrequency::try_from(value) {
        Ok(pb::ScanFrequency::ScanOnPush) => Ok(Frequency::ScanOnPush),
        Ok(pb::ScanFrequency::ContinuousScan) => Ok(Frequency::Continuous),
        Ok(pb::ScanFrequency::Manual) => Ok(Frequency::Manual),
        _ => Err(Violation::new(
            field,
            "scanning.frequency",
            "use SCAN_FREQUENCY_SCAN_ON_PUSH or SCAN_FREQUENCY_CONTINUOUS_SCAN",
        )),
    }
}

pub(super) fn configuration_message(
    registry: &RegistryRef,
    settings: &ScanningSettings,
) -> pb::ScanningConfiguration {
    pb::ScanningConfiguration {
        registry: registry.alias.clone(),
        scan_type: if settings.enhanced {
            pb::ScanType::Enhanced
        } else {
            pb::ScanType::Basic
        } as i32,
        rules: settings
            .rules
            .iter()
            .map(|(frequency, filters)| pb::ScanningRule {
                frequency: match frequency {
                    Frequency::ScanOnPush => pb::ScanFrequency::ScanOnPush,
                    Frequency::Continuous => pb::ScanFrequency::ContinuousScan,
                    Frequency::Manual => pb::ScanFrequency::Manual,
                } as i32,
                repository_filters: filters.clone(),
            })
            .collect(),
    }
}

pub(super) fn configuration_json(settings: &ScanningSettings) -> Value {
    json!({
        "scanType": if settings.enhanced { "ENHANCED" } else { "BASIC" },
        "rules": settings.rules.iter().map(|(f, filters)| json!({"frequency": format!("{f:?}"), "repositoryFilters": filters})).collect::<Vec<_>>(),
    })
}

pub(super) async fn get_scanning_configuration(
    state: &AppState,
    call: &mut Call,
    request: &pb::GetScanningConfigurationRequest,
) -> Result<(pb::ScanningConfiguration, Value), ApiError> {
    call.caller()?;
    let registry = state.registry(&request.registry).map_err(|v| invalid(vec![v]))?;
    call.set_registry(&registry.reference);
    call.authorize(&state.authz, &Resource::Registry(registry.reference.clone()))?;
    let log = CallLog::default();
    let settings = registry.get_scanning_configuration(&log).await;
    call.record.outcome.ecr_request_ids = log.ids();
    let settings = settings?;
    Ok((
        configuration_message(&registry.reference, &settings),
        configuration_json(&settings),
    ))
}

pub(super) async fn update_scanning_configuration(
    state: &AppState,
    call: &mut Call,
    request: &pb::UpdateScanningConfigurationRequest,
) -> Result<(pb::ScanningConfiguration, Value), ApiError> {
    call.caller()?;
    let mut violations = Vec::new();
    let registry = state.registry(&request.registry).or_record(&mut violations);
    violations.extend(check_request_id(&request.request_id));
    let enhanced = match pb::ScanType::try_from(request.scan_type) {
        Ok(pb::ScanType::Basic) => false,
        Ok(pb::ScanType::Enhanced) => true,
        _ => {
            violations.push(Violation::new(
                "scan_type",
                "scanning.scan-type",
                "required: SCAN_TYPE_BASIC or SCAN_TYPE_ENHANCED",
            ));
            false
        }
    };
    let mut rules = Vec::new();
    for (i, rule) in request.rules.iter().enumerate() {
        match frequency_of(rule.frequency, format!("rules[{i}].frequency")) {
            Ok(frequency) => rules.push((frequency, rule.repository_filters.clone())),
            Err(v) => violations.push(v),
        }
    }
    let policy = state.policy.current();
    let config = policy.config();
    violations.extend(gate::scanning_violations(
        enhanced,
        &rules,
        &config.naming.namespaces,
        config.settings.require_scan_on_push,
    ));
    let Some(registry) = registry.filter(|_| violations.is_empty()) else {
        return Err(invalid(violations));
    };
    call.set_registry(&registry.reference);
    call.authorize(&state.authz, &Resource::Registry(registry.reference.clone()))?;
    let settings = ScanningSettings { enhanced, rules };
    if request.validate_only {
        return Ok((
            configuration_message(&registry.reference, &settings),
            json!({"validateOnly": true, "configuration": configuration_json(&settings)}),
        ));
    }
    let (response, replayed) = mutation::run(
        &state.store,
        call,
        &request.request_id,
        request,
        state.mutation_lease,
        |attempt| async move {
            registry
                .put_scanning_configuration(&attempt.log, &settings)
                .await?;
            Ok(Done {
                response: configuration_message(&registry.reference, &settings),
                change: CacheChange::Nothing,
                elements: configuration_json(&settings),
            })
        },
    )
    .await?;
    Ok((response, json!({"replayed": replayed})))
}
