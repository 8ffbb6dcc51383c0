//! Seeds realistic `TO_EXPORT` GeneratedAppRecords for the demo and the
//! benchmarks: `cargo run --example seed -- --count 600 --deanery MER --deanery EOE`.
//! Reads the same settings as the daemon (`ESR_MONGODB__URI`, ...).
//! A few records per deanery are deliberately invalid (`--invalid-every`),
//! so the demo shows rejections too.

use std::path::PathBuf;

use anyhow::Context;
use bson::{doc, oid::ObjectId, DateTime, Document};
use clap::Parser;

#[derive(Debug, Parser)]
struct Args {
    /// Settings file, as for esr-exporter.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Records in total, spread evenly over the deaneries.
    #[arg(long, default_value_t = 600)]
    count: usize,
    /// Deanery codes (default: six real local offices).
    #[arg(long = "deanery")]
    deaneries: Vec<String>,
    /// Make every Nth record invalid (0: none).
    #[arg(long, default_value_t = 97)]
    invalid_every: usize,
    /// Drop the configured database first (a fresh demo).
    #[arg(long)]
    drop_database: bool,
    /// Records per insert batch.
    #[arg(long, default_value_t = 5_000)]
    batch: usize,
}

const FIRST: [&str; 12] = [
    "Amelia", "Oliver", "Priya", "Mohammed", "Siobhan", "Chidi", "Zofia", "Rhys", "Aisha",
    "Tomasz", "Grace", "Kwame",
];
const LAST: [&str; 12] = [
    "Smith",
    "Patel",
    "O'Connor",
    "Nowak",
    "Okafor",
    "Jones",
    "Williams, Jr",
    "Khan",
    "Evans",
    "Müller",
    "Davies",
    "Ali",
];
const SPECIALTY: [&str; 6] = [
    "General Practice",
    "Internal Medicine",
    "Paediatrics",
    "Anaesthetics",
    "Psychiatry",
    "General Surgery",
];
const GRADE: [&str; 5] = ["FY1", "FY2", "CT1", "ST3", "ST5"];

fn date(days_from_epoch: i64) -> DateTime {
    DateTime::from_millis(days_from_epoch * 86_400_000)
}

fn record(deanery: &str, n: usize, invalid: bool) -> Document {
    let now = DateTime::now();
    let mut d = doc! {
        "_id": ObjectId::new(),
        "deanery": deanery,
        "status": "TO_EXPORT",
        "positionNumber": format!("{deanery}/RX{:03}/{}/{:05}", n % 500, GRADE[n % 5], n),
        "gmcNumber": format!("{}", 7_000_000 + n),
        "title": "Dr",
        "firstName": FIRST[n % FIRST.len()],
        "lastName": LAST[(n / 7) % LAST.len()],
        "gender": if n.is_multiple_of(2) { "F" } else { "M" },
        "niNumber": format!("QQ{:06}C", n % 1_000_000),
        "emailAddress": format!("doctor.{n}@example.nhs.uk"),
        "gradeAbbreviation": GRADE[n % GRADE.len()],
        "specialty": SPECIALTY[n % SPECIALTY.len()],
        "dateOfBirth": date(9_000 + (n as i64 % 3_000)),
        "placementStartDate": date(20_700 + (n as i64 % 60)),
        "placementEndDate": date(21_100 + (n as i64 % 60)),
        "wte": if n.is_multiple_of(4) { 0.6 } else { 1.0 },
        "createdAt": now,
        "updatedAt": now,
    };
    if invalid {
        // A real-world defect: the upstream service left the position out.
        d.remove("positionNumber");
    }
    d
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let settings = esr_exporter::config::Settings::load(args.config.as_deref())
        .context("Failed to load settings")?;
    let client = mongodb::Client::with_uri_str(settings.mongodb.uri.expose())
        .await
        .context("Failed to connect to MongoDB")?;
    let db = client.database(&settings.mongodb.database);
    if args.drop_database {
        db.drop().await.context("Failed to drop the database")?;
    }
    let records = db.collection::<Document>(&settings.mongodb.records_collection);
    let deaneries = if args.deaneries.is_empty() {
        ["MER", "EOE", "LDN", "OXF", "WES", "SEV"]
            .map(String::from)
            .to_vec()
    } else {
        args.deaneries
    };
    let mut batch = Vec::with_capacity(args.batch);
    for n in 0..args.count {
        let invalid = args.invalid_every > 0 && n % args.invalid_every == args.invalid_every - 1;
        batch.push(record(&deaneries[n % deaneries.len()], n, invalid));
        if batch.len() == args.batch {
            records
                .insert_many(std::mem::take(&mut batch))
                .await
                .context("Failed to insert records")?;
        }
    }
    if !batch.is_empty() {
        records
            .insert_many(batch)
            .await
            .context("Failed to insert records")?;
    }
    println!(
        "seeded {} TO_EXPORT records over {} deaneries into {}.{}",
        args.count,
        deaneries.len(),
        settings.mongodb.database,
        settings.mongodb.records_collection
    );
    Ok(())
}
