-- Baseline: the tables the Epic 5 migration touches, as they stood before it.
-- Written the way `prisma migrate dev` writes SQL: quoted camelCase columns,
-- TEXT ids, TIMESTAMP(3), one "-- CreateTable"/"-- CreateIndex" block each.

-- CreateEnum
CREATE TYPE "EventType" AS ENUM ('MISSION_STARTED', 'MISSION_COMPLETED', 'CARD_REVIEWED', 'VALIDATION_COMPLETED', 'SESSION_STARTED', 'SESSION_ENDED', 'LECTURE_UPLOADED', 'SEARCH_PERFORMED');

-- CreateTable
CREATE TABLE "personalization_experiments" (
    "id" TEXT NOT NULL,
    "name" TEXT NOT NULL,
    "description" TEXT,
    "context" TEXT NOT NULL,
    "variantA" JSONB NOT NULL,
    "variantB" JSONB NOT NULL,
    "startDate" TIMESTAMP(3) NOT NULL,
    "endDate" TIMESTAMP(3),
    "targetUserCount" INTEGER NOT NULL DEFAULT 0,
    "minParticipants" INTEGER NOT NULL DEFAULT 20,
    "successMetric" TEXT NOT NULL,
    "winningVariant" TEXT,
    "statisticalSignificance" DOUBLE PRECISION,
    "createdAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "updatedAt" TIMESTAMP(3) NOT NULL,

    CONSTRAINT "personalization_experiments_pkey" PRIMARY KEY ("id")
);

-- CreateTable
CREATE TABLE "experiment_assignments" (
    "id" TEXT NOT NULL,
    "userId" TEXT NOT NULL,
    "experimentId" TEXT NOT NULL,
    "variant" TEXT NOT NULL,
    "assignedAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,

    CONSTRAINT "experiment_assignments_pkey" PRIMARY KEY ("id")
);

-- CreateTable
CREATE TABLE "study_schedule_recommendations" (
    "id" TEXT NOT NULL,
    "userId" TEXT NOT NULL,
    "recommendedStartTime" TIMESTAMP(3) NOT NULL,
    "recommendedDuration" INTEGER NOT NULL,
    "confidence" DOUBLE PRECISION NOT NULL,
    "reasoningFactors" JSONB NOT NULL,
    "calendarIntegration" BOOLEAN NOT NULL DEFAULT false,
    "createdAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,

    CONSTRAINT "study_schedule_recommendations_pkey" PRIMARY KEY ("id")
);

-- CreateTable
CREATE TABLE "behavioral_events" (
    "id" TEXT NOT NULL,
    "userId" TEXT NOT NULL,
    "eventType" "EventType" NOT NULL,
    "eventData" JSONB NOT NULL,
    "timestamp" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "sessionPerformanceScore" INTEGER,
    "engagementLevel" TEXT,
    "completionQuality" TEXT,
    "timeOfDay" INTEGER,
    "dayOfWeek" INTEGER,
    "contentType" TEXT,
    "difficultyLevel" TEXT,

    CONSTRAINT "behavioral_events_pkey" PRIMARY KEY ("id")
);

-- CreateTable
CREATE TABLE "behavioral_patterns" (
    "id" TEXT NOT NULL,
    "userId" TEXT NOT NULL,
    "patternType" TEXT NOT NULL,
    "patternName" TEXT NOT NULL,
    "patternData" JSONB NOT NULL,
    "confidence" DOUBLE PRECISION NOT NULL,
    "evidence" TEXT[],
    "occurrenceCount" INTEGER NOT NULL DEFAULT 1,
    "detectedAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "lastSeenAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,

    CONSTRAINT "behavioral_patterns_pkey" PRIMARY KEY ("id")
);

-- CreateTable
CREATE TABLE "struggle_predictions" (
    "id" TEXT NOT NULL,
    "userId" TEXT NOT NULL,
    "learningObjectiveId" TEXT,
    "topicId" TEXT,
    "predictionDate" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "predictedStruggleProbability" DOUBLE PRECISION NOT NULL,
    "predictionConfidence" DOUBLE PRECISION NOT NULL,
    "predictionStatus" TEXT NOT NULL DEFAULT 'PENDING',
    "actualOutcome" BOOLEAN,
    "outcomeRecordedAt" TIMESTAMP(3),
    "featureVector" JSONB NOT NULL,

    CONSTRAINT "struggle_predictions_pkey" PRIMARY KEY ("id")
);

-- CreateTable
CREATE TABLE "recommendations" (
    "id" TEXT NOT NULL,
    "userId" TEXT NOT NULL,
    "recommendationType" TEXT NOT NULL,
    "title" TEXT NOT NULL,
    "description" TEXT NOT NULL,
    "actionableText" TEXT NOT NULL,
    "confidence" DOUBLE PRECISION NOT NULL,
    "estimatedImpact" DOUBLE PRECISION NOT NULL,
    "easeOfImplementation" DOUBLE PRECISION NOT NULL,
    "priorityScore" DOUBLE PRECISION NOT NULL,
    "status" TEXT NOT NULL DEFAULT 'PENDING',
    "sourcePatternIds" TEXT[],
    "createdAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "viewedAt" TIMESTAMP(3),
    "dismissedAt" TIMESTAMP(3),

    CONSTRAINT "recommendations_pkey" PRIMARY KEY ("id")
);

-- CreateTable
CREATE TABLE "personalization_configs" (
    "id" TEXT NOT NULL,
    "userId" TEXT NOT NULL,
    "context" TEXT NOT NULL,
    "strategyVariant" TEXT NOT NULL,
    "parameters" JSONB NOT NULL,
    "isActive" BOOLEAN NOT NULL DEFAULT true,
    "totalApplications" INTEGER NOT NULL DEFAULT 0,
    "successfulApplications" INTEGER NOT NULL DEFAULT 0,
    "avgReward" DOUBLE PRECISION NOT NULL DEFAULT 0,
    "activatedAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "deactivatedAt" TIMESTAMP(3),
    "createdAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "updatedAt" TIMESTAMP(3) NOT NULL,

    CONSTRAINT "personalization_configs_pkey" PRIMARY KEY ("id")
);

-- CreateIndex
CREATE INDEX "experiment_assignments_userId_idx" ON "experiment_assignments"("userId");

-- CreateIndex
CREATE INDEX "experiment_assignments_experimentId_idx" ON "experiment_assignments"("experimentId");

-- CreateIndex
CREATE UNIQUE INDEX "experiment_assignments_userId_experimentId_key" ON "experiment_assignments"("userId", "experimentId");

-- CreateIndex
CREATE INDEX "study_schedule_recommendations_userId_idx" ON "study_schedule_recommendations"("userId");

-- CreateIndex
CREATE INDEX "behavioral_events_userId_idx" ON "behavioral_events"("userId");

-- CreateIndex
CREATE INDEX "behavioral_events_timestamp_idx" ON "behavioral_events"("timestamp");

-- CreateIndex
CREATE INDEX "behavioral_patterns_userId_idx" ON "behavioral_patterns"("userId");

-- CreateIndex
CREATE INDEX "behavioral_patterns_patternType_idx" ON "behavioral_patterns"("patternType");

-- CreateIndex
CREATE INDEX "struggle_predictions_userId_idx" ON "struggle_predictions"("userId");

-- CreateIndex
CREATE INDEX "recommendations_userId_idx" ON "recommendations"("userId");

-- CreateIndex
CREATE INDEX "recommendations_status_idx" ON "recommendations"("status");

-- CreateIndex
CREATE INDEX "personalization_configs_userId_idx" ON "personalization_configs"("userId");
