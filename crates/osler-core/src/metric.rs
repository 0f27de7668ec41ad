//! The metric catalog: every kind of reading Osler understands, with its codes, units and range.
//!
//! Codes come from `shared/reference/clinical.md`, which cites LOINC, the FHIR R4 vital-signs
//! profile, the HL7 CGM implementation guide and IEEE 11073-10101 (MDC, in the 32-bit
//! context-free form partition × 65536 + term). This table is the only place a code is written;
//! wire formats look codes up here, so a diastolic pressure can never be coded as a heart rate.
//!
//! Plausibility ranges are Osler's own engineering bounds, not clinical thresholds: they are set
//! beyond the extremes a living patient can show, so that only a broken sensor or a unit mix-up
//! falls outside them. Alert thresholds live in the rules crate, not here.

use std::fmt;

/// FHIR/terminology system URI for LOINC.
pub const LOINC: &str = "http://loinc.org";
/// FHIR system URI for IEEE 11073-10101 (MDC) codes.
pub const MDC: &str = "urn:iso:std:iso:11073:10101";
/// FHIR system URI for UCUM units.
pub const UCUM: &str = "http://unitsofmeasure.org";

/// A kind of reading. The discriminant is stored on disk: never renumber a variant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum Metric {
    HeartRate = 1,
    RestingHeartRate = 2,
    Spo2 = 3,
    BloodPressure = 4,
    BodyWeight = 5,
    BodyTemperature = 6,
    RespiratoryRate = 7,
    CgmGlucose = 8,
    CapillaryGlucose = 9,
    Steps = 10,
    BodyFat = 11,
    HrvSdnn = 12,
}

/// The observation category a metric belongs to (FHIR `observation-category`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Category {
    VitalSigns,
    Laboratory,
    Activity,
}

impl Category {
    pub fn code(self) -> &'static str {
        match self {
            Category::VitalSigns => "vital-signs",
            Category::Laboratory => "laboratory",
            Category::Activity => "activity",
        }
    }
    pub fn display(self) -> &'static str {
        match self {
            Category::VitalSigns => "Vital Signs",
            Category::Laboratory => "Laboratory",
            Category::Activity => "Activity",
        }
    }
    pub fn from_code(code: &str) -> Option<Category> {
        [
            Category::VitalSigns,
            Category::Laboratory,
            Category::Activity,
        ]
        .into_iter()
        .find(|c| c.code() == code)
    }
}

/// A code in a code system, with its display text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Code {
    pub code: &'static str,
    pub display: &'static str,
}

const fn code(code: &'static str, display: &'static str) -> Code {
    Code { code, display }
}

/// How an accepted input unit becomes the canonical unit.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Conversion {
    /// Already canonical (or a UCUM synonym of it, such as `{beats}/min` for `/min`).
    Same,
    /// Multiply by an exact factor.
    Scale(f64),
    /// Degrees Fahrenheit to Celsius: (F − 32) × 5/9 (definition of the Fahrenheit scale).
    FahrenheitToCelsius,
    /// Kelvin to Celsius: K − 273.15 (SI definition of the Celsius scale).
    KelvinToCelsius,
}

/// A unit a sender may use for a metric.
#[derive(Clone, Copy, Debug)]
pub struct InputUnit {
    /// The UCUM code as written by the sender.
    pub ucum: &'static str,
    pub conversion: Conversion,
}

const fn same(ucum: &'static str) -> InputUnit {
    InputUnit {
        ucum,
        conversion: Conversion::Same,
    }
}

/// One part of a panel metric (blood pressure's systolic and diastolic).
#[derive(Clone, Copy, Debug)]
pub struct Part {
    pub loinc: Code,
    pub mdc: Code,
    /// Plausible range in the canonical unit, inclusive.
    pub range: (f64, f64),
}

/// Everything Osler knows about a metric.
#[derive(Clone, Copy, Debug)]
pub struct MetricInfo {
    pub metric: Metric,
    /// A stable, human-friendly name used on the command line and in logs.
    pub key: &'static str,
    pub category: Category,
    /// The LOINC code Osler writes first.
    pub loinc: Code,
    /// Further LOINC codings Osler writes (SpO2's "by pulse oximetry" code).
    pub extra_loinc: &'static [Code],
    /// LOINC codes a sender may use for this metric besides the ones Osler writes.
    pub accepted_loinc: &'static [&'static str],
    /// The MDC coding Osler writes, where one exists.
    pub mdc: Option<Code>,
    /// MDC codes a sender may use besides `mdc`.
    pub accepted_mdc: &'static [&'static str],
    /// The canonical UCUM unit code and its human display.
    pub unit: &'static str,
    pub unit_display: &'static str,
    /// Units accepted on input; the first is the canonical unit.
    pub input_units: &'static [InputUnit],
    /// Plausible range of the canonical value, inclusive (for panels, see `parts`).
    pub range: (f64, f64),
    /// The two parts of a panel, if this metric is one.
    pub parts: Option<[Part; 2]>,
    /// FHIR profiles that Osler's Observations of this metric conform to.
    pub profiles: &'static [&'static str],
}

/// The FHIR R4 vital-signs base profile.
pub const VITALSIGNS_PROFILE: &str = "http://hl7.org/fhir/StructureDefinition/vitalsigns";

/// Exact: the international avoirdupois pound is defined as 0.45359237 kg (1959 agreement).
const KG_PER_LB: f64 = 0.453_592_37;
/// Glucose C6H12O6 has a molar mass of 180.156 g/mol, so 1 mmol/L = 18.0156 mg/dL.
/// (clinical.md rounds this to 18.016.)
const MGDL_PER_MMOLL_GLUCOSE: f64 = 18.0156;

const PER_MIN_UNITS: &[InputUnit] = &[same("/min"), same("{beats}/min"), same("1/min")];
const GLUCOSE_UNITS: &[InputUnit] = &[
    same("mg/dL"),
    InputUnit {
        ucum: "mmol/L",
        conversion: Conversion::Scale(MGDL_PER_MMOLL_GLUCOSE),
    },
];

/// The catalog, one entry per `Metric`, in discriminant order.
pub static CATALOG: [MetricInfo; 12] = [
    MetricInfo {
        metric: Metric::HeartRate,
        key: "heart-rate",
        category: Category::VitalSigns,
        loinc: code("8867-4", "Heart rate"),
        extra_loinc: &[],
        accepted_loinc: &[],
        // MDC_ECG_HEART_RATE; pulse rates from a cuff or an oximeter are heart rate too.
        mdc: Some(code("147842", "MDC_ECG_HEART_RATE")),
        accepted_mdc: &["149546", "149530"],
        unit: "/min",
        unit_display: "beats/minute",
        input_units: PER_MIN_UNITS,
        range: (20.0, 300.0),
        parts: None,
        profiles: &[
            VITALSIGNS_PROFILE,
            "http://hl7.org/fhir/StructureDefinition/heartrate",
        ],
    },
    MetricInfo {
        metric: Metric::RestingHeartRate,
        key: "resting-heart-rate",
        category: Category::VitalSigns,
        loinc: code("40443-4", "Heart rate --resting"),
        extra_loinc: &[],
        accepted_loinc: &[],
        mdc: None,
        accepted_mdc: &[],
        unit: "/min",
        unit_display: "beats/minute",
        input_units: PER_MIN_UNITS,
        range: (20.0, 250.0),
        parts: None,
        profiles: &[VITALSIGNS_PROFILE],
    },
    MetricInfo {
        metric: Metric::Spo2,
        key: "spo2",
        category: Category::VitalSigns,
        // 2708-6 is the code the R4 oxygen-saturation profile requires; 59408-5 is US Core's.
        loinc: code("2708-6", "Oxygen saturation in Arterial blood"),
        extra_loinc: &[code(
            "59408-5",
            "Oxygen saturation in Arterial blood by Pulse oximetry",
        )],
        accepted_loinc: &[],
        mdc: Some(code("150456", "MDC_PULS_OXIM_SAT_O2")),
        accepted_mdc: &[],
        unit: "%",
        unit_display: "%",
        input_units: &[same("%")],
        range: (50.0, 100.0),
        parts: None,
        profiles: &[
            VITALSIGNS_PROFILE,
            "http://hl7.org/fhir/StructureDefinition/oxygensat",
        ],
    },
    MetricInfo {
        metric: Metric::BloodPressure,
        key: "blood-pressure",
        category: Category::VitalSigns,
        loinc: code("85354-9", "Blood pressure panel with all children optional"),
        extra_loinc: &[],
        accepted_loinc: &[],
        mdc: Some(code("150020", "MDC_PRESS_BLD_NONINV")),
        accepted_mdc: &[],
        unit: "mm[Hg]",
        unit_display: "mmHg",
        input_units: &[same("mm[Hg]")],
        range: (20.0, 300.0),
        parts: Some([
            Part {
                loinc: code("8480-6", "Systolic blood pressure"),
                mdc: code("150021", "MDC_PRESS_BLD_NONINV_SYS"),
                range: (40.0, 300.0),
            },
            Part {
                // Diastolic is 8462-4. Public sample mappings have coded it as 8867-4 (heart rate).
                loinc: code("8462-4", "Diastolic blood pressure"),
                mdc: code("150022", "MDC_PRESS_BLD_NONINV_DIA"),
                range: (20.0, 200.0),
            },
        ]),
        profiles: &[
            VITALSIGNS_PROFILE,
            "http://hl7.org/fhir/StructureDefinition/bp",
        ],
    },
    MetricInfo {
        metric: Metric::BodyWeight,
        key: "body-weight",
        category: Category::VitalSigns,
        loinc: code("29463-7", "Body weight"),
        extra_loinc: &[],
        accepted_loinc: &[],
        mdc: Some(code("188736", "MDC_MASS_BODY_ACTUAL")),
        accepted_mdc: &[],
        unit: "kg",
        unit_display: "kg",
        input_units: &[
            same("kg"),
            InputUnit {
                ucum: "g",
                conversion: Conversion::Scale(0.001),
            },
            InputUnit {
                ucum: "[lb_av]",
                conversion: Conversion::Scale(KG_PER_LB),
            },
        ],
        range: (0.2, 650.0),
        parts: None,
        profiles: &[
            VITALSIGNS_PROFILE,
            "http://hl7.org/fhir/StructureDefinition/bodyweight",
        ],
    },
    MetricInfo {
        metric: Metric::BodyTemperature,
        key: "body-temperature",
        category: Category::VitalSigns,
        loinc: code("8310-5", "Body temperature"),
        extra_loinc: &[],
        accepted_loinc: &[],
        mdc: Some(code("150364", "MDC_TEMP_BODY")),
        accepted_mdc: &[],
        unit: "Cel",
        unit_display: "C",
        input_units: &[
            same("Cel"),
            InputUnit {
                ucum: "[degF]",
                conversion: Conversion::FahrenheitToCelsius,
            },
            InputUnit {
                ucum: "K",
                conversion: Conversion::KelvinToCelsius,
            },
        ],
        range: (25.0, 45.0),
        parts: None,
        profiles: &[
            VITALSIGNS_PROFILE,
            "http://hl7.org/fhir/StructureDefinition/bodytemp",
        ],
    },
    MetricInfo {
        metric: Metric::RespiratoryRate,
        key: "respiratory-rate",
        category: Category::VitalSigns,
        loinc: code("9279-1", "Respiratory rate"),
        extra_loinc: &[],
        accepted_loinc: &[],
        mdc: Some(code("151562", "MDC_RESP_RATE")),
        accepted_mdc: &[],
        unit: "/min",
        unit_display: "breaths/minute",
        input_units: &[same("/min"), same("{breaths}/min"), same("1/min")],
        range: (2.0, 80.0),
        parts: None,
        profiles: &[
            VITALSIGNS_PROFILE,
            "http://hl7.org/fhir/StructureDefinition/resprate",
        ],
    },
    MetricInfo {
        metric: Metric::CgmGlucose,
        key: "cgm-glucose",
        // CGM readings are not vital signs: the HL7 CGM IG files them as laboratory.
        category: Category::Laboratory,
        loinc: code("99504-3", "Glucose [Mass/volume] in Interstitial fluid"),
        extra_loinc: &[],
        // The molar code (HL7 CGM IG); its values arrive in mmol/L and are converted.
        accepted_loinc: &["105272-9"],
        mdc: Some(code("160212", "MDC_CONC_GLU_ISF")),
        accepted_mdc: &[],
        unit: "mg/dL",
        unit_display: "mg/dL",
        input_units: GLUCOSE_UNITS,
        range: (10.0, 1000.0),
        parts: None,
        profiles: &[],
    },
    MetricInfo {
        metric: Metric::CapillaryGlucose,
        key: "capillary-glucose",
        category: Category::Laboratory,
        loinc: code(
            "41653-7",
            "Glucose [Mass/volume] in Capillary blood by Glucometer",
        ),
        extra_loinc: &[],
        accepted_loinc: &[],
        mdc: Some(code("160184", "MDC_CONC_GLU_CAPILLARY_WHOLEBLOOD")),
        accepted_mdc: &[],
        unit: "mg/dL",
        unit_display: "mg/dL",
        input_units: GLUCOSE_UNITS,
        range: (10.0, 2000.0),
        parts: None,
        profiles: &[],
    },
    MetricInfo {
        metric: Metric::Steps,
        key: "steps",
        category: Category::Activity,
        // Per-sample step count. clinical.md marks the unit UNVERIFIED: Osler writes {steps},
        // a UCUM annotation of the unity unit, which is valid UCUM whatever LOINC's example is.
        loinc: code("55423-8", "Number of steps in unspecified time Pedometer"),
        extra_loinc: &[],
        accepted_loinc: &[],
        mdc: None,
        accepted_mdc: &[],
        unit: "{steps}",
        unit_display: "steps",
        input_units: &[same("{steps}"), same("1"), same("{count}")],
        range: (0.0, 100_000.0),
        parts: None,
        profiles: &[],
    },
    MetricInfo {
        metric: Metric::BodyFat,
        key: "body-fat",
        category: Category::VitalSigns,
        loinc: code("41982-0", "Percentage of body fat Measured"),
        extra_loinc: &[],
        accepted_loinc: &[],
        mdc: Some(code("188748", "MDC_BODY_FAT")),
        accepted_mdc: &[],
        unit: "%",
        unit_display: "%",
        input_units: &[same("%")],
        range: (1.0, 80.0),
        parts: None,
        profiles: &[VITALSIGNS_PROFILE],
    },
    MetricInfo {
        metric: Metric::HrvSdnn,
        key: "hrv-sdnn",
        category: Category::VitalSigns,
        loinc: code(
            "80404-7",
            "R-R interval.standard deviation (Heart rate variability)",
        ),
        extra_loinc: &[],
        accepted_loinc: &[],
        mdc: None,
        accepted_mdc: &[],
        unit: "ms",
        unit_display: "ms",
        input_units: &[
            same("ms"),
            InputUnit {
                ucum: "s",
                conversion: Conversion::Scale(1000.0),
            },
        ],
        range: (1.0, 1000.0),
        parts: None,
        profiles: &[VITALSIGNS_PROFILE],
    },
];

impl Metric {
    /// Every metric, in catalog order.
    pub fn all() -> impl Iterator<Item = Metric> {
        CATALOG.iter().map(|m| m.metric)
    }

    pub fn info(self) -> &'static MetricInfo {
        // The catalog is in discriminant order starting at 1; a test checks this.
        &CATALOG[self as usize - 1]
    }

    /// The metric stored under this discriminant, if any.
    pub fn from_u8(n: u8) -> Option<Metric> {
        CATALOG
            .get(usize::from(n).checked_sub(1)?)
            .map(|m| m.metric)
    }

    pub fn from_key(key: &str) -> Option<Metric> {
        CATALOG.iter().find(|m| m.key == key).map(|m| m.metric)
    }

    /// The metric a LOINC code names, whether Osler writes that code or only accepts it.
    pub fn from_loinc(code: &str) -> Option<Metric> {
        CATALOG
            .iter()
            .find(|m| {
                m.loinc.code == code
                    || m.extra_loinc.iter().any(|c| c.code == code)
                    || m.accepted_loinc.contains(&code)
            })
            .map(|m| m.metric)
    }

    /// The metric an MDC code names.
    pub fn from_mdc(code: &str) -> Option<Metric> {
        CATALOG
            .iter()
            .find(|m| m.mdc.is_some_and(|c| c.code == code) || m.accepted_mdc.contains(&code))
            .map(|m| m.metric)
    }
}

impl fmt::Display for Metric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.info().key)
    }
}

impl MetricInfo {
    /// The accepted unit with this UCUM code.
    pub fn input_unit(&self, ucum: &str) -> Option<&InputUnit> {
        self.input_units.iter().find(|u| u.ucum == ucum)
    }

    /// The UCUM codes accepted on input, for error messages.
    pub fn accepted_units(&self) -> Vec<&'static str> {
        self.input_units.iter().map(|u| u.ucum).collect()
    }
}

impl Conversion {
    /// Applies the conversion. Converted values are rounded to 6 decimal places so that
    /// floating-point noise (36.99999999999999) does not reach a clinician; that is far below
    /// any device's resolution.
    pub fn apply(self, v: f64) -> f64 {
        let converted = match self {
            Conversion::Same => return v,
            Conversion::Scale(k) => v * k,
            Conversion::FahrenheitToCelsius => (v - 32.0) * 5.0 / 9.0,
            Conversion::KelvinToCelsius => v - 273.15,
        };
        (converted * 1e6).round() / 1e6
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalog_is_in_discriminant_order() {
        for (i, m) in CATALOG.iter().enumerate() {
            assert_eq!(m.metric as usize, i + 1, "{}", m.key);
            assert_eq!(Metric::from_u8(i as u8 + 1), Some(m.metric));
            assert_eq!(Metric::from_key(m.key), Some(m.metric));
            assert_eq!(
                m.input_units[0].ucum, m.unit,
                "first input unit is canonical"
            );
            assert!(m.range.0 < m.range.1);
        }
        assert_eq!(Metric::from_u8(0), None);
        assert_eq!(Metric::from_u8(13), None);
    }

    /// The codes are checked against the table in shared/reference/clinical.md.
    #[test]
    fn codes_match_the_reference_table() {
        let expect = [
            (Metric::HeartRate, "8867-4", Some("147842"), "/min"),
            (Metric::RestingHeartRate, "40443-4", None, "/min"),
            (Metric::Spo2, "2708-6", Some("150456"), "%"),
            (Metric::BloodPressure, "85354-9", Some("150020"), "mm[Hg]"),
            (Metric::BodyWeight, "29463-7", Some("188736"), "kg"),
            (Metric::BodyTemperature, "8310-5", Some("150364"), "Cel"),
            (Metric::RespiratoryRate, "9279-1", Some("151562"), "/min"),
            (Metric::CgmGlucose, "99504-3", Some("160212"), "mg/dL"),
            (Metric::CapillaryGlucose, "41653-7", Some("160184"), "mg/dL"),
            (Metric::Steps, "55423-8", None, "{steps}"),
            (Metric::BodyFat, "41982-0", Some("188748"), "%"),
            (Metric::HrvSdnn, "80404-7", None, "ms"),
        ];
        for (metric, loinc, mdc, unit) in expect {
            let info = metric.info();
            assert_eq!(info.loinc.code, loinc, "{metric}");
            assert_eq!(info.mdc.map(|c| c.code), mdc, "{metric}");
            assert_eq!(info.unit, unit, "{metric}");
            assert_eq!(Metric::from_loinc(loinc), Some(metric));
        }
        let bp = Metric::BloodPressure.info().parts.unwrap();
        assert_eq!(bp[0].loinc.code, "8480-6");
        assert_eq!(bp[1].loinc.code, "8462-4");
        assert_eq!((bp[0].mdc.code, bp[1].mdc.code), ("150021", "150022"));
        // CGM is never coded as capillary glucose, and the molar CGM code is understood.
        assert_eq!(Metric::from_loinc("105272-9"), Some(Metric::CgmGlucose));
        assert_eq!(
            Metric::from_loinc("41653-7"),
            Some(Metric::CapillaryGlucose)
        );
        assert_eq!(Metric::from_loinc("59408-5"), Some(Metric::Spo2));
        assert_eq!(Metric::from_mdc("149546"), Some(Metric::HeartRate));
        assert_eq!(
            Metric::from_loinc("8462-4"),
            None,
            "a component is not a metric"
        );
    }

    #[test]
    fn every_code_names_one_metric() {
        let mut seen = std::collections::HashMap::new();
        for m in &CATALOG {
            let codes = std::iter::once(m.loinc.code)
                .chain(m.extra_loinc.iter().map(|c| c.code))
                .chain(m.accepted_loinc.iter().copied());
            for c in codes {
                assert_eq!(seen.insert(c, m.metric), None, "LOINC {c} used twice");
            }
        }
    }

    #[test]
    fn conversions_are_exact() {
        let lb = Metric::BodyWeight.info().input_unit("[lb_av]").unwrap();
        assert_eq!(lb.conversion.apply(100.0), 45.359237);
        let f = Metric::BodyTemperature.info().input_unit("[degF]").unwrap();
        assert_eq!(f.conversion.apply(98.6), 37.0);
        assert_eq!(f.conversion.apply(212.0), 100.0);
        let k = Metric::BodyTemperature.info().input_unit("K").unwrap();
        assert_eq!(k.conversion.apply(310.15), 37.0);
        let mmol = Metric::CgmGlucose.info().input_unit("mmol/L").unwrap();
        assert_eq!(mmol.conversion.apply(5.0), 90.078);
        let g = Metric::BodyWeight.info().input_unit("g").unwrap();
        assert_eq!(g.conversion.apply(3250.0), 3.25);
        assert_eq!(Conversion::Same.apply(72.123456789), 72.123456789);
    }
}
